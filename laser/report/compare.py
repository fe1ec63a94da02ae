"""`laser compare <run_dir> <run_dir> ... [--out DIR]`: tables and figures across runs of different
models, methods and datasets.

Writes to `--out` (default `compare/`):
  scores.md, scores.csv    accuracy with 95% bootstrap intervals per method x model x dataset, and the
                           paired difference to the vanilla run of the same model and dataset
  vaq_per_layer.png        mean VAQ per layer on a relative depth axis, a panel per model
  chosen_layer.png         histogram of l* per model and dataset
  paths.png                share of each decode path and the accuracy on its samples
  index.html, thumbs/      with --html: the browsable report (report/html.py): tables, figures and
                           the gallery of the samples on which the runs' answers differ
A folder without predictions is skipped with a note (an error when no run is left).
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
    html: bool = False,
) -> dict[str, object]:
    """Load the runs, write the tables and figures (and with `html` the browsable report) into `out`;
    returns rows, written paths, skipped figures and skipped (empty) run folders."""
    from . import figures

    empty: list[str] = []
    runs = load_runs(run_dirs, metric, skipped=empty)
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
    markdown = markdown_table(rows)
    if html:
        from .html import HtmlOptions, write_html

        notes = [f"skipped {message}" for message in empty]
        written.append(write_html(runs, markdown, out, [p for p in written if p.suffix == ".png"],
                                  HtmlOptions(seed=seed, notes=tuple(notes))))
    return {"rows": rows, "written": written, "skipped": skipped, "markdown": markdown, "empty": empty}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="laser compare",
        description="Tables and figures across prediction runs (models x methods x datasets).",
    )
    parser.add_argument("run_dirs", nargs="+", help="run folders written by `laser predict`")
    parser.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    parser.add_argument("--metric", choices=METRICS, default=None, help="score every run with this metric")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed, and which agreeing samples --html shows (default 0)")
    parser.add_argument("--html", action="store_true",
                        help="also write index.html: tables, figures and a gallery of the samples the runs disagree on "
                             "(opens from disk)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = compare(args.run_dirs, args.out, args.metric, args.n_boot, args.seed, args.html)
    print(result["markdown"])
    for path in result["written"]:
        print(f"wrote {path}")
    for message in result["empty"]:
        print(f"skipped {message}")
    for name in result["skipped"]:
        print(f"skipped {name}: no run has the data it needs (VAQ vectors / chosen layers)")
    return 0
