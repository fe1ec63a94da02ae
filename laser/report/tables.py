"""Score rows (method x model x dataset) with bootstrap intervals and paired differences to vanilla,
written as Markdown and CSV."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..records.metrics import bootstrap_ci
from .runs import Run, vanilla_for

PATH_ORDER = ("vanilla", "direct", "contrastive")
CSV_FIELDS = (
    "dataset", "model", "method", "metric", "n", "accuracy", "ci_low", "ci_high",
    "vanilla_accuracy", "n_paired", "delta_vs_vanilla", "delta_ci_low", "delta_ci_high",
    "errors", "paths", "run",
)  # fmt: skip


def paired_difference(
    run: Run, baseline: Run, n_boot: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float], int] | None:
    """Mean of `run - baseline` per-sample scores over their shared sample_ids, its 95% paired
    bootstrap interval (resampling samples, both runs together) and the number of shared ids."""
    mine, theirs = run.values(), baseline.values()
    shared = [i for i in mine if i in theirs]
    if not shared:
        return None
    diffs = np.array([mine[i] - theirs[i] for i in shared], dtype=np.float64)
    low, high = bootstrap_ci(diffs, n=n_boot, seed=seed)
    return float(diffs.mean()), (low, high), len(shared)


def path_counts(run: Run) -> dict[str, int]:
    """How many records took each decode path ("error" for records without one)."""
    counts = Counter(str(r.get("path") or "error") for r in run.records)
    order = [p for p in PATH_ORDER if p in counts] + sorted(p for p in counts if p not in PATH_ORDER)
    return {p: counts[p] for p in order}


def _sort_key(run: Run) -> tuple:
    return (run.dataset, run.model, not run.is_vanilla, run.label)


def score_rows(runs: Sequence[Run], n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per run, sorted by dataset, model, then vanilla first and the other methods by name.

    Fractions in [0, 1]: `accuracy`, `ci_low`/`ci_high` (bootstrap, `laser.records.metrics.score`),
    `delta_vs_vanilla` (paired mean difference over `n_paired` shared ids) and its interval.
    Difference fields are None for vanilla runs and runs without a vanilla run to pair with.
    """
    rows = []
    for run in sorted(runs, key=_sort_key):
        result = run.score(n_boot=n_boot, seed=seed)
        ci = result.get("ci95") or (None, None)
        row: dict[str, Any] = {
            "dataset": run.dataset,
            "model": run.model,
            "method": run.label,
            "metric": run.metric,
            "n": result["n"],
            "accuracy": result["accuracy"],
            "ci_low": ci[0],
            "ci_high": ci[1],
            "vanilla_accuracy": None,
            "n_paired": None,
            "delta_vs_vanilla": None,
            "delta_ci_low": None,
            "delta_ci_high": None,
            "errors": result.get("errors", 0),
            "paths": path_counts(run),
            "run": str(run.path),
        }
        baseline = vanilla_for(run, runs)
        if baseline is not None:
            row["vanilla_accuracy"] = baseline.score(n_boot=1)["accuracy"]
            paired = None if run is baseline else paired_difference(run, baseline, n_boot, seed)
            if paired is not None:
                delta, (low, high), shared = paired
                row.update(n_paired=shared, delta_vs_vanilla=delta, delta_ci_low=low, delta_ci_high=high)
        rows.append(row)
    return rows


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _accuracy_cell(row: dict[str, Any]) -> str:
    if row["accuracy"] is None:
        return "n/a"
    return f"{_pct(row['accuracy'])} [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]"


def _delta_cell(row: dict[str, Any]) -> str:
    if row["delta_vs_vanilla"] is None:
        return "(baseline)" if row["method"] == "vanilla" else "–"
    significant = row["delta_ci_low"] > 0 or row["delta_ci_high"] < 0
    text = f"{_pct(row['delta_vs_vanilla'], True)} [{_pct(row['delta_ci_low'], True)}, {_pct(row['delta_ci_high'], True)}]"
    return f"**{text}**" if significant else text


def _paths_cell(row: dict[str, Any]) -> str:
    total = sum(row["paths"].values()) or 1
    return ", ".join(f"{p} {100 * c / total:.0f}%" for p, c in row["paths"].items())


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The long table (one line per run) and a compact pivot (method rows, model/dataset columns)."""
    lines = [
        "## Scores",
        "",
        "Accuracy in %, with 95% bootstrap intervals. Δ: difference to the vanilla run of the same model "
        "and dataset in percentage points, paired over the sample_ids both runs hold (n paired), with a 95% "
        "paired bootstrap interval; **bold** when the interval excludes 0.",
        "",
        "| dataset | model | method | metric | n | accuracy % [95% CI] | Δ vs vanilla, pp [95% CI] | n paired | decode paths |",
        "|---|---|---|---|---:|---|---|---:|---|",
    ]
    for row in rows:
        paired = "–" if row["n_paired"] is None else str(row["n_paired"])
        lines.append(
            f"| {row['dataset']} | {row['model']} | {row['method']} | {row['metric']} | {row['n']} | "
            f"{_accuracy_cell(row)} | {_delta_cell(row)} | {paired} | {_paths_cell(row)} |"
        )
    columns = list(dict.fromkeys((row["model"], row["dataset"]) for row in rows))
    methods = list(
        dict.fromkeys(row["method"] for row in sorted(rows, key=lambda r: r["method"] != "vanilla"))
    )
    cells = {(row["method"], row["model"], row["dataset"]): row for row in rows}
    lines += [
        "",
        "## Summary",
        "",
        "Accuracy % (Δ vs vanilla, pp).",
        "",
        "| method | " + " | ".join(f"{m} / {d}" for m, d in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in methods:
        values = []
        for model, dataset in columns:
            row = cells.get((method, model, dataset))
            if row is None or row["accuracy"] is None:
                values.append("–")
            elif row["delta_vs_vanilla"] is None:
                values.append(_pct(row["accuracy"]))
            else:
                values.append(f"{_pct(row['accuracy'])} ({_pct(row['delta_vs_vanilla'], True)})")
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """`scores.md` and `scores.csv` in `out` (CSV: fractions, full precision, paths as "p:n;p:n")."""
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / "scores.md", out / "scores.csv"
    md_path.write_text(markdown_table(rows))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            flat = {k: ("" if row[k] is None else row[k]) for k in CSV_FIELDS}
            flat["paths"] = ";".join(f"{p}:{c}" for p, c in row["paths"].items())
            writer.writerow(flat)
    return md_path, csv_path
