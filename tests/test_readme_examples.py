"""Every Python block of the README and of docs/*.md runs (so examples cannot rot).

Blocks run in file order, each in a fresh interpreter, in one working folder per file (a later block of a
file may read what an earlier one of the same file wrote). A block preceded by
`<!-- readme-test: tiny-llava -->` gets a prelude defining `model`, `processor` (a tiny random LLaVA),
`image`, `images` and `questions`; one preceded by `<!-- readme-test: skip -->` is only compiled. Blocks
of other languages (bash, yaml, toml, plain) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[\w-]+) -->\s*\n)?```python\n(?P<code>.*?)```", re.S)

PRELUDES = {
    "tiny-llava": f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from PIL import Image
from tiny_models import tiny_llava
model, processor = tiny_llava()
image = Image.new("RGB", (320, 240), (200, 30, 30))
images, questions = [image, image.rotate(90, expand=True)], ["What is the color ?", "Is there a red box ?"]
""",
}


def doc_files() -> list[Path]:
    """README.md first, then every page of docs/ in name order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def file_blocks(path: Path) -> list[tuple[str, int, str | None, str]]:
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix()
    return [(name, text[: m.start()].count("\n") + 1, m.group("marker"), m.group("code")) for m in BLOCK.finditer(text)]


def doc_blocks() -> list[tuple[str, int, str | None, str]]:
    return [block for path in doc_files() for block in file_blocks(path)]


def test_the_readme_has_the_python_examples():
    assert file_blocks(ROOT / "README.md"), "the README opens with a Python example"
    codes = [code for _, _, _, code in doc_blocks()]
    assert len(codes) >= 5
    for needed in ("VQADataModule", "LightningDataModule", "CompositeVLM.build", "load_runs", "register_adapter"):
        assert any(needed in code for code in codes), needed


def test_blocks_are_collected_from_the_readme_and_every_docs_page():
    files = {name for name, _, _, _ in doc_blocks()}
    assert "README.md" in files and "docs/python_api.md" in files and "docs/adapters.md" in files


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> dict[str, Path]:
    return {}


def _workdir(workdirs: dict[str, Path], tmp_path_factory, name: str) -> Path:
    if name not in workdirs:
        workdirs[name] = tmp_path_factory.mktemp(re.sub(r"\W", "_", name))
    return workdirs[name]


@pytest.mark.parametrize("name, line, marker, code", doc_blocks(),
                         ids=[f"{name}:{line}" for name, line, _, _ in doc_blocks()])
def test_doc_python_block_runs(name, line, marker, code, workdirs, tmp_path_factory):
    where = f"{name}:{line}"
    if marker == "skip":
        compile(code, where, "exec")
        return
    if marker is not None and marker not in PRELUDES:
        pytest.fail(f"{where}: unknown readme-test marker {marker!r}")
    workdir = _workdir(workdirs, tmp_path_factory, name)
    script = workdir / f"block_{line}.py"
    script.write_text(PRELUDES.get(marker, "") + code, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"{where} failed:\n{run.stderr[-4000:]}"
