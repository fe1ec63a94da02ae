"""Every Python block of the README runs (so examples cannot rot).

Blocks run in README order, each in a fresh interpreter, in one shared working folder (a later block may
read what an earlier one wrote). A block preceded by `<!-- readme-test: tiny-llava -->` gets a prelude
defining `model`, `processor` (a tiny random LLaVA), `image`, `images` and `questions`; one preceded by
`<!-- readme-test: skip -->` is only compiled.
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


def readme_blocks() -> list[tuple[int, str | None, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group("marker"), m.group("code")) for m in BLOCK.finditer(text)]


def test_the_readme_has_the_python_examples():
    codes = [code for _, _, code in readme_blocks()]
    assert len(codes) >= 5
    for needed in ("VQADataModule", "LightningDataModule", "CompositeVLM.build", "load_runs", "register_adapter"):
        assert any(needed in code for code in codes), needed


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("line, marker, code", readme_blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_python_block_runs(line, marker, code, workdir):
    if marker == "skip":
        compile(code, f"README.md:{line}", "exec")
        return
    if marker is not None and marker not in PRELUDES:
        pytest.fail(f"README.md:{line}: unknown readme-test marker {marker!r}")
    script = workdir / f"block_{line}.py"
    script.write_text(PRELUDES.get(marker, "") + code, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"README.md:{line} failed:\n{run.stderr[-4000:]}"
