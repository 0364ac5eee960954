"""docs/cli.md is generated from the Typer app and must be current; every option has help."""

from pathlib import Path

from ddpp_cli import clidoc
from ddpp_cli.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current():
    assert DOC.read_text() == clidoc.render(app), (
        "docs/cli.md is stale; regenerate it with: python -m ddpp_cli.clidoc > docs/cli.md"
    )


def test_every_option_has_help_text():
    assert clidoc.undocumented_options(app) == []


def test_every_command_has_a_one_line_description():
    rendered = clidoc.render(app)
    for name in ("buffer", "distill", "evaluate", "crossarch", "visualize", "run"):
        row = next(line for line in rendered.splitlines() if line.startswith(f"| [`{name}`]"))
        assert row.split("|")[2].strip(), name
