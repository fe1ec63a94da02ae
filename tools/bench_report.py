"""How long the `laser compare --html` report takes to make and to open, for a run of N samples.

    python tools/bench_report.py [--samples 5000] [--methods 3] [--out /tmp/laser_report_bench]

Writes N-sample runs of synthetic records (vanilla, laser and more methods, answers that differ on about
half the samples, one image per 10 samples), then times: the report (`compare(..., html=True)`, the first
time with its thumbnails, the second time reusing them) and headless Chromium loading `index.html`
until its scripts have rendered the gallery (`--dump-dom`; the page's status element says how many
samples match). Target: the page opens in a few seconds at 5,000 samples.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from laser.report.compare import compare  # noqa: E402


def make_runs(root: Path, n: int, methods: int) -> list[Path]:
    rng = random.Random(0)
    data = root / "data"
    data.mkdir(parents=True)
    for i in range(0, n, 10):
        Image.new("RGB", (640, 480), (i % 255, 90, 160)).save(data / f"img{i // 10}.jpg")
    (data / "eval.jsonl").write_text("".join(
        json.dumps({"sample_id": f"s{i}", "image": f"img{i // 10}.jpg", "question": f"question {i}?", "answers": ["a"],
                    "meta": {"family": ("reading", "existence", "relational")[i % 3]}}) + "\n" for i in range(n)))
    names = ["vanilla", "laser", *[f"method{k}" for k in range(methods - 2)]]
    folders = []
    for name in names:
        folder = root / name
        folder.mkdir()
        (folder / "run_config.json").write_text(json.dumps({
            "model": {"name_or_path": "bench"}, "method": {"name": name},
            "data": {"format": "jsonl", "annotations": str(data / "eval.jsonl"), "metric": "exact"}}))
        lines = []
        for i in range(n):
            answer = "a" if rng.random() < 0.6 else rng.choice("bcd")
            box = [rng.randint(0, 300), rng.randint(0, 200)]
            lines.append(json.dumps({
                "sample_id": f"s{i}", "question": f"question {i}?", "answers": ["a"], "prediction": answer,
                "layer": rng.randint(1, 20) if name != "vanilla" else None, "vaq": None,
                "box": [*box, box[0] + 320, box[1] + 240] if name != "vanilla" else None,
                "path": rng.choice(["direct", "contrastive"]), "error": None,
                "masked_cells": [[0, [0.1, 0.1, 0.2, 0.2]]] if name == "laser" else None,
                "meta": {"family": ("reading", "existence", "relational")[i % 3]}}))
        (folder / "predictions.rank0.jsonl").write_text("\n".join(lines) + "\n")
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--methods", type=int, default=3)
    parser.add_argument("--out", default="/tmp/laser_report_bench")
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    folders = make_runs(root, args.samples, args.methods)
    report = root / "report"
    for label in ("first (thumbnails made)", "again (thumbnails reused)"):
        start = time.perf_counter()
        compare(folders, report, n_boot=200, html=True)
        print(f"report, {label}: {time.perf_counter() - start:.1f} s")
    page = report / "index.html"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    print(f"index.html: {page.stat().st_size / 1e6:.1f} MB, thumbnails: {len(list((report / 'thumbs').glob('*.jpg')))}")
    if chromium is None:
        print("no chromium: page load not timed")
        return
    start = time.perf_counter()
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    seconds = time.perf_counter() - start
    matching = re.search(r'data-matching="(\d+)"', dom)
    print(f"headless Chromium: page loaded and gallery rendered in {seconds:.1f} s "
          f"({matching.group(1) if matching else '?'} samples match the default view)")


if __name__ == "__main__":
    main()
