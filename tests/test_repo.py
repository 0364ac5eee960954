"""Repository hygiene: README's test command is CI's, the code is ruff-clean, and the repository
is self-contained (no pointer outside it, every docs link and anchor resolves)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_test_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    ci_command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)
    tests_section = readme.split("## Tests", 1)[1]
    commands = re.findall(r"```(?:bash|sh)\n(.+?)\n```", tests_section, re.S)
    assert commands and commands[0].strip() == ci_command


def _ruff() -> str | None:
    beside_python = Path(sys.executable).parent / "ruff"
    return str(beside_python) if beside_python.exists() else shutil.which("ruff")


@pytest.mark.slow
@pytest.mark.skipif(_ruff() is None, reason="ruff is not installed")
def test_ruff_is_clean():
    ruff = _ruff()
    check = subprocess.run(
        [ruff, "check", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_readme_gives_a_newcomer_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert commands[0].startswith("ddpp run --dataset fashionmnist --ipc 1 --profile quick")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] == re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)


def _tracked_text_files() -> list[Path]:
    """Every file git tracks that reads as UTF-8 text (none when this is not a git checkout)."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    files = []
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        try:
            path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        files.append(path)
    return files


# Spelled in pieces so that this file does not match itself.
_OUTSIDE = re.compile(
    "|".join(
        (
            r"\bSPEC" + r"\b",  # the notes' name, with a section sign, ".md" or alone
            r"\bMETHODS" + r"\.md",
            r"\bMETHODS" + r" §",
            r"\.\./" + r"shared",
        )
    )
)


def test_nothing_points_outside_the_repository():
    """The team's working notes are not in the repository: code and docs point to docs/."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _tracked_text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)


def test_ci_names_only_files_that_exist():
    ci = (ROOT / ".ci" / "run").read_text()
    named = re.findall(r"(?<![\w/.])((?:tests|docs|benchmarks|ddpp_cli)/[\w/.-]+\.\w+)", ci)
    missing = [name for name in named if not (ROOT / name).exists()]
    assert not missing, missing


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces → '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            anchor, n = _anchor(heading.group(1)), 1
            while anchor in anchors:  # GitHub numbers repeated headings
                anchor, n = f"{_anchor(heading.group(1))}-{n}", n + 1
            anchors.add(anchor)
    return anchors


def test_docs_links_and_anchors_resolve():
    """Links between docs pages, and code's ``docs/<page>.md#<anchor>`` pointers, all resolve."""
    docs = ROOT / "docs"
    anchors = {page.name: _anchors(page) for page in docs.glob("*.md")}
    broken = []
    for page in [*docs.glob("*.md"), ROOT / "README.md"]:
        for target, anchor in re.findall(
            r"\]\(((?!https?:)[^)#\s]*)(?:#([^)\s]+))?\)", page.read_text(encoding="utf-8")
        ):
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {target}#{anchor}")
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8")
        for name, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", text):
            if anchor not in anchors.get(name, set()):
                broken.append(f"{path.relative_to(ROOT)}: docs/{name}#{anchor}")
    assert not broken, broken


def test_torch_floor_is_one_whose_weights_only_load_is_safe():
    """torch.load(weights_only=True), which every import of another tool's file relies on, can
    run code in torch before 2.6 (CVE-2025-32434): the declared floor must be 2.6 or newer."""
    text = (ROOT / "pyproject.toml").read_text()
    floors = {
        name: tuple(int(part) for part in version.split("."))
        for name, version in re.findall(r'"(torch|torchvision)>=([\d.]+)"', text)
    }
    assert floors["torch"] >= (2, 6) and floors["torchvision"] >= (0, 21), floors


def test_modules_stay_small_and_say_their_concern():
    """No module in ddpp_cli/ above 500 lines, none in commands/ above 300, and each opens with
    a docstring whose first line names its concern."""
    import ast

    for path in sorted((ROOT / "ddpp_cli").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        limit = 300 if path.parent.name == "commands" else 500
        assert lines <= limit, f"{path.relative_to(ROOT)}: {lines} lines (limit {limit})"
        if path.name != "__main__.py":
            docstring = ast.get_docstring(ast.parse(text))
            assert docstring and docstring.strip(), f"{path.relative_to(ROOT)} has no docstring"
