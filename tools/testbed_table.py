"""The testbed results of the README: every method on the full shipped split.

    python tools/testbed_table.py --out docs/testbed

Writes `results.md` (accuracy per family and size bucket with 95% bootstrap intervals, and the paired
difference to vanilla), `results.json`, one run folder per method (`runs/<method>/`, readable by
`laser evaluate` and `laser compare`), `layer_profile.png` (mean VAQ per layer per question family)
and `chosen_layers.png` (histogram of l* per family).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laser.adapters import create_adapter  # noqa: E402

from laser.method.config import LaserConfig  # noqa: E402
from laser.paths import assets_dir  # noqa: E402
from laser.testbed.benchmark import FAMILIES, load_split, results_table, run_methods  # noqa: E402

METHODS = ["vanilla", "oracle", "oracle_tight", "vicrop", "vcd", "vcd_greedy", "laser", "laser_full", "laser_static"]


def write_run(folder: Path, method: str, records: list[dict], rows: list[dict]) -> None:
    """A run folder like `laser predict` writes, so `laser evaluate` / `laser compare` read it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"name_or_path": "laser:assets/testbed/model", "adapter": None, "dtype": "auto"},
        "data": {"format": "jsonl", "annotations": "laser:assets/testbed/eval.jsonl", "image_root": "laser:assets/testbed",
                 "metric": "exact", "limit": None},
        "method": {"name": method} if method.startswith("oracle") else LaserConfig.preset(method).to_dict(),
        "seed": 0,
    }  # fmt: skip
    (folder / "run_config.json").write_text(json.dumps(config, indent=2) + "\n")
    by_id = {r["sample_id"]: r for r in records}
    with (folder / "predictions.rank0.jsonl").open("w") as f:
        for row in rows:
            rec = by_id[row["sample_id"]]
            out = {
                "sample_id": row["sample_id"], "question": rec["question"], "answers": rec["answers"],
                "prediction": row["prediction"], "layer": row["layer"], "vaq": row["vaq"], "box": row["box"],
                "path": row["path"], "timings": {}, "error": None, "meta": rec["meta"],
            }  # fmt: skip
            f.write(json.dumps(out) + "\n")


def layer_figures(rows: list[dict], num_layers: int, out: Path) -> None:
    layers = np.arange(num_layers)
    fig, ax = plt.subplots(figsize=(6, 4))
    for family in FAMILIES:
        vaq = np.array([r["vaq"] for r in rows if r["family"] == family and r["vaq"]])
        if len(vaq):
            mean = vaq.mean(0)
            sem = vaq.std(0) / np.sqrt(len(vaq))
            ax.plot(layers, mean, marker="o", label=f"{family} (n={len(vaq)})")
            ax.fill_between(layers, mean - 1.96 * sem, mean + 1.96 * sem, alpha=0.2)
    ax.set(xlabel="decoder layer l", ylabel="mean VAQ[l]", title="Testbed LLaVA: VAQ per layer by question family")
    ax.set_xticks(layers)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "layer_profile.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(FAMILIES)
    for i, family in enumerate(FAMILIES):
        chosen = [r["layer"] for r in rows if r["family"] == family and r["layer"] is not None]
        if chosen:
            share = np.bincount(chosen, minlength=num_layers) / len(chosen)
            ax.bar(layers + (i - 1) * width, share, width, label=f"{family} (n={len(chosen)})")
    ax.set(xlabel="chosen layer l*", ylabel="share of questions", title="Testbed LLaVA: layer chosen by VAQ")
    ax.set_xticks(layers)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=len(FAMILIES), fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "chosen_layers.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/testbed")
    parser.add_argument("--per-cell", type=int, default=None, help="limit questions per (family, size)")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)  # the testbed model is tiny: one thread is faster than two
    start = time.perf_counter()
    adapter = create_adapter(str(assets_dir() / "testbed" / "model"))
    records = load_split(args.per_cell)
    print(f"{len(records)} questions, methods: {', '.join(args.methods)}", flush=True)
    results = run_methods(adapter, records, args.methods, progress=True)
    table = results_table(results)
    command = "python tools/testbed_table.py" + (f" --per-cell {args.per_cell}" if args.per_cell else "")
    (out / "results.md").write_text(f"<!-- {command} -->\n{table}\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for method, rows in results.items():
        write_run(out / "runs" / method, method, records, rows)
    if "laser" in results:
        layer_figures(results["laser"], adapter.num_layers, out)
    print(table)
    print(f"done in {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
