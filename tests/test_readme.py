"""The README opens with the two set-up commands, and CI runs the second one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_block and readme.index(first_block.group(0)) < readme.index("\n## ")
    return [line for line in first_block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_demo_and_test_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("laser demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.replace('pip install -q -e ".[dev]"', 'pip install -e ".[dev]"')
