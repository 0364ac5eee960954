"""Repository hygiene: README's test command is CI's, and the code is ruff-clean."""

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
