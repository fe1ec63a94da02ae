"""`laser compare <run_dir> <run_dir> ... [--out DIR]`: tables and figures across runs of different
models, methods and datasets.

Writes to `--out` (default `compare/`):
  scores.md, scores.csv    accuracy with 95% bootstrap intervals per method x model x dataset, and the
                           paired difference to the vanilla run of the same model and dataset
  vaq_per_layer.png        mean VAQ per layer on a relative depth axis, a panel per model
  chosen_layer.png         histogram of l* per model and dataset
  paths.png                share of each decode path and the accuracy on its samples
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..records.metrics import METRICS
from .runs import load_runs
from .tables import markdown_table, score_rows, write_tables

FIGURES = {
    "vaq_per_layer.png": "vaq_figure",
    "chosen_layer.png": "layer_figure",
    "paths.png": "path_figure",
}


def compare(
    run_dirs: Sequence[str | Path],
    out: str | Path = "compare",
    metric: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """Load the runs, write the tables and figures into `out`; returns rows and written paths."""
    from . import figures

    runs = load_runs(run_dirs, metric)
    out = Path(out)
    rows = score_rows(runs, n_boot=n_boot, seed=seed)
    md_path, csv_path = write_tables(rows, out)
    written = [md_path, csv_path]
    skipped = []
    for name, function in FIGURES.items():
        if getattr(figures, function)(runs, out / name):
            written.append(out / name)
        else:
            skipped.append(name)
    return {"rows": rows, "written": written, "skipped": skipped, "markdown": markdown_table(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="laser compare",
        description="Tables and figures across prediction runs (models x methods x datasets).",
    )
    parser.add_argument("run_dirs", nargs="+", help="run folders written by `laser predict`")
    parser.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    parser.add_argument("--metric", choices=METRICS, default=None, help="score every run with this metric")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = compare(args.run_dirs, args.out, args.metric, args.n_boot, args.seed)
    print(result["markdown"])
    for path in result["written"]:
        print(f"wrote {path}")
    for name in result["skipped"]:
        print(f"skipped {name}: no run has the data it needs (VAQ vectors / chosen layers)")
    return 0
