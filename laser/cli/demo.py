"""`laser demo`: the shipped testbed LVLM on a subset of its fine-detail split (CPU, < 5 minutes).

Prints the accuracy table of vanilla, an oracle crop, ViCrop and LASER, and writes overlay pictures
(heatmap of the chosen layer, crop box, counterfactual mask, VAQ per layer) for a few samples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

from ..paths import assets_dir

DEMO_METHODS = ["vanilla", "oracle", "oracle_tight", "vicrop", "laser", "laser_full"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="laser demo", description=__doc__)
    parser.add_argument("--out", default="demo_output", help="folder for the overlay pictures")
    parser.add_argument("--per-cell", type=int, default=8, help="questions per (family, size) cell")
    parser.add_argument("--methods", nargs="+", default=DEMO_METHODS)
    parser.add_argument("--pictures", type=int, default=4)
    args = parser.parse_args(argv)

    import torch

    from ..loading import load_engine
    from ..method.config import LaserConfig
    from ..testbed.benchmark import load_split, results_table, run_methods

    torch.set_num_threads(1)  # the testbed model is tiny: one thread is faster than two
    start = time.perf_counter()
    model_dir = assets_dir() / "testbed" / "model"
    engine = load_engine(str(model_dir), LaserConfig.preset("laser_full", save_heatmap=True), device="cpu")
    adapter = engine.adapter
    records = load_split(limit_per_cell=args.per_cell)
    print(f"laser demo: testbed LLaVA ({adapter.num_layers} layers, {model_dir}) on {len(records)} questions")
    results = run_methods(adapter, records, args.methods, progress=True)
    print()
    print(results_table(results))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vanilla = {r["sample_id"]: r["prediction"] for r in results.get("vanilla", [])}
    chosen = [r for r in records if r["meta"]["family"] == "reading" and r["meta"]["size"] != "large"]
    written = []
    for record in chosen[: args.pictures]:
        image = Image.open(assets_dir() / "testbed" / record["image"]).convert("RGB")
        pred = engine.answer(image, record["question"])
        path = out / f"{record['sample_id']}.png"
        try:
            from ..report.overlay import OverlaySample, render_overlay
        except ImportError:  # the report package is optional for the demo table
            break
        render_overlay(
            OverlaySample(image, pred, vanilla.get(record["sample_id"]), record["question"], record["answers"]),
            path,
            adapter.num_layers,
            engine.config,
            title=f"testbed {record['sample_id']} ({record['meta']['size']} target)",
        )
        written.append(path)
    if written:
        print(f"\noverlays: {', '.join(str(p) for p in written)}")
    print(f"laser demo: done in {time.perf_counter() - start:.0f} s")
    return 0
