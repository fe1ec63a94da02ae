"""A saved tiny LLaVA checkpoint and a small JSONL dataset, for command-line runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

QUESTIONS = [
    "What is the color ?",
    "Is there a red box ?",
    "What digit is in the blue box ?",
    "How many",
    "What is written on the sign ?",
    "Is there a green box ?",
    "What is in the box left of the blue box ?",
    "What color is the sign ?",
]


def save_tiny_llava(folder: Path, **options) -> Path:
    """Save `tiny_llava(**options)` (e.g. `image_size=112` for 64 visual tokens, a faster model)."""
    from tiny_models import tiny_llava

    model, processor = tiny_llava(**options)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_dataset(folder: Path, n: int = 8, sizes=((500, 300), (300, 420), (336, 336), (640, 480))) -> Path:
    """`folder/annotations.jsonl` with n samples and their images under `folder/images/`."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"img{i}.png")
        lines.append(
            {
                "sample_id": f"s{i:03d}",
                "image": f"images/img{i}.png",
                "question": QUESTIONS[i % len(QUESTIONS)],
                "answers": ["red"],
                "meta": {"family": "reading" if i % 2 else "existence"},
            }
        )
    path = folder / "annotations.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def predict_args(model: Path, annotations: Path, output: Path, *extra: str) -> list[str]:
    return [
        f"model={model}",
        "data=jsonl",
        f"data.annotations={annotations}",
        f"data.image_root={annotations.parent}",
        f"output_dir={output}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def laser_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "laser.cli", *args]


def run_laser(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(laser_command(*args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"laser {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def records_by_id(output: Path) -> dict[str, dict]:
    """Records of every rank file; asserts each sample_id appears exactly once."""
    seen: dict[str, dict] = {}
    for path in sorted(output.glob("predictions.rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert record["sample_id"] not in seen, f"{record['sample_id']} written twice"
            seen[record["sample_id"]] = record
    return seen


def comparable(record: dict) -> tuple:
    return (record["prediction"], record["layer"], record["box"], record["path"], record["error"])


def run_inprocess(*args: str) -> tuple[int, str, str]:
    """`laser <args>` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    import contextlib
    import io

    from laser.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def predict_in_process(*args: str) -> int:
    """`laser predict <args>` in this process with one torch thread, as the subprocess runs
    (OMP_NUM_THREADS=1) compute, so their float sums are the same."""
    import torch

    from laser.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["predict", *args])
    finally:
        torch.set_num_threads(threads)
