"""Scoring methods on the testbed split: per family and size bucket, with bootstrap intervals.

`run_methods` answers the split with engine presets and with two oracle crops centred on the evidence
(the target box, and the anchor box of a relational question): `oracle` has LASER's crop size,
`oracle_tight` is a square of `TIGHT_SIDE_FACTOR` (2.5) x the target's side; `results_table` renders the
Markdown table with 95% intervals and the paired difference to vanilla.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..loading import sample_seed
from ..method.config import CropConfig, LaserConfig
from ..method.crop import crop_size
from ..method.engine import LaserEngine
from ..paths import assets_dir
from ..records.metrics import bootstrap_ci, exact_match

SPLIT = "testbed/eval.jsonl"
FAMILIES = ("existence", "reading", "relational")
SIZES = ("small", "medium", "large")


def load_split(limit_per_cell: int | None = None, path: Path | None = None) -> list[dict[str, Any]]:
    """Records of the shipped split; with `limit_per_cell`, the first N of each (family, size) cell."""
    path = path or assets_dir() / SPLIT
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if limit_per_cell is None:
        return records
    counts: dict[tuple[str, str], int] = {}
    chosen = []
    for r in records:
        cell = (r["meta"]["family"], r["meta"]["size"])
        if counts.get(cell, 0) < limit_per_cell:
            counts[cell] = counts.get(cell, 0) + 1
            chosen.append(r)
    return chosen


TIGHT_SIDE_FACTOR = 2.5
"""`oracle_tight`: the square's side in multiples of the target's longer side."""
TIGHT_MIN_SIDE = 64
"""`oracle_tight`: the square's smallest side in pixels (the model's input side, so never upsampled
less than the full image is)."""
TIGHT_PAIR_MARGIN = 1.2
"""`oracle_tight`, relational questions: the square also covers target + anchor, their joint box's
longer side times this."""


def _evidence_box(meta: dict[str, Any]) -> tuple[int, int, int, int]:
    """The target box, joined with the anchor box of a relational question."""
    x0, y0, x1, y1 = meta["target_box"]
    if "anchor_box" in meta:
        a = meta["anchor_box"]
        x0, y0, x1, y1 = min(x0, a[0]), min(y0, a[1]), max(x1, a[2]), max(y1, a[3])
    return x0, y0, x1, y1


def oracle_box(meta: dict[str, Any], image_size: tuple[int, int], crop: CropConfig | None = None):
    """LASER's crop size (`crop.ratio`, `crop.min_side`; by default the `laser` preset's) centred on the
    evidence (the target, plus the anchor of a relational question)."""
    crop = crop or LaserConfig.preset("laser").crop
    width, height = image_size
    x0, y0, x1, y1 = _evidence_box(meta)
    cw, ch = crop_size(image_size, crop.ratio, crop.min_side)
    cw, ch = min(width, max(cw, x1 - x0)), min(height, max(ch, y1 - y0))
    left = int(min(max(0, (x0 + x1) / 2 - cw / 2), width - cw))
    top = int(min(max(0, (y0 + y1) / 2 - ch / 2), height - ch))
    return left, top, left + cw, top + ch


def tight_oracle_box(meta: dict[str, Any], image_size: tuple[int, int]):
    """A square of `TIGHT_SIDE_FACTOR` x the target's side (at least `TIGHT_MIN_SIDE`; for a relational
    question at least `TIGHT_PAIR_MARGIN` x the target + anchor box), centred on the evidence, in the image."""
    width, height = image_size
    tx0, ty0, tx1, ty1 = meta["target_box"]
    side = TIGHT_SIDE_FACTOR * max(tx1 - tx0, ty1 - ty0)
    x0, y0, x1, y1 = _evidence_box(meta)
    if "anchor_box" in meta:
        side = max(side, TIGHT_PAIR_MARGIN * max(x1 - x0, y1 - y0))
    side = int(min(max(side, TIGHT_MIN_SIDE), width, height))
    left = int(min(max(0, (x0 + x1) / 2 - side / 2), width - side))
    top = int(min(max(0, (y0 + y1) / 2 - side / 2), height - side))
    return left, top, left + side, top + side


ORACLES = {"oracle": oracle_box, "oracle_tight": tight_oracle_box}


def _correct(prediction: str, answers: Sequence[str]) -> bool:
    """The `exact` metric of `laser evaluate` / `laser compare` (the testbed split's metric)."""
    return exact_match(prediction, answers) == 1.0


def run_methods(
    adapter: Any,
    records: list[dict[str, Any]],
    methods: Sequence[str] | Mapping[str, LaserConfig | None],
    image_root: Path | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Answers of every method on every record: {method: [{sample_id, family, size, correct, ...}]}.

    A method is an engine preset or an oracle by name, or, in a mapping name -> LaserConfig, any
    config under its own name (e.g. the static pipeline at a chosen layer; None: the preset of that name)."""
    configs = dict(methods) if isinstance(methods, Mapping) else {}
    image_root = image_root or assets_dir() / "testbed"
    images = {}
    for r in records:
        if r["image"] not in images:
            images[r["image"]] = Image.open(image_root / r["image"]).convert("RGB")
    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        config = configs.get(method) or LaserConfig.preset("vanilla" if method in ORACLES else method)
        engine = LaserEngine(adapter, config)
        rows = []
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            batch_images = [images[r["image"]] for r in chunk]
            boxes = [None] * len(chunk)
            if method in ORACLES:
                boxes = [ORACLES[method](r["meta"], im.size) for r, im in zip(chunk, batch_images)]
                batch_images = [im.crop(b) for im, b in zip(batch_images, boxes)]
            seeds = [sample_seed(0, r["sample_id"]) for r in chunk]  # as `laser predict` with seed 0
            preds = engine.answer_batch(batch_images, [r["question"] for r in chunk], seeds)
            for r, p, b in zip(chunk, preds, boxes):
                rows.append(
                    {
                        "sample_id": r["sample_id"],
                        "family": r["meta"]["family"],
                        "size": r["meta"]["size"],
                        "prediction": p.answer,
                        "answers": r["answers"],
                        "correct": _correct(p.answer, r["answers"]),
                        "layer": p.layer,
                        "vaq": p.vaq,
                        "box": list(b) if b else p.box,
                        "path": p.path,
                        "masked_cells": p.to_record()["masked_cells"],
                        "target_box": r["meta"]["target_box"],
                    }
                )
        if progress:
            acc = np.mean([row["correct"] for row in rows])
            print(f"  {method:<12} {100 * acc:5.1f}%  ({len(rows)} questions)", flush=True)
        out[method] = rows
    return out


def crop_contains_target(row: dict[str, Any], centre: bool = False) -> bool | None:
    """Whether the row's crop box holds its whole target box (with `centre`, the target's centre); None
    without a crop, or when the target is the whole canvas (the evidence of a "no" existence answer:
    generated boxes never touch the corner)."""
    box, target = row.get("box"), row.get("target_box")
    if not box or not target or (target[0] == 0 and target[1] == 0):
        return None
    if centre:
        cx, cy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
        return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
    return box[0] <= target[0] and box[1] <= target[1] and box[2] >= target[2] and box[3] >= target[3]


def paired_difference_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0):
    """Mean of a - b over paired samples and its 95% percentile bootstrap interval: the resamples and
    seed of `laser compare` (`report.tables.paired_difference`), so a comparison over the same samples in
    the same order has the same interval in both reports."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_ci(diff, n=n, seed=seed)
    return float(diff.mean()), low, high


def _cell(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "–"
    values = [float(r["correct"]) for r in rows]
    low, high = bootstrap_ci(values, n=1000)
    return f"{100 * np.mean(values):.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def paired_table(results: dict[str, list[dict[str, Any]]], reference: str) -> list[str]:
    """Markdown lines: each method minus `reference`, paired by sample, on reading / small targets / all."""
    lines = [f"| method − {reference} (paired, points [95% CI]) | reading | small targets | all |", "|---|---|---|---|"]
    base = {r["sample_id"]: r for r in results[reference]}
    for method, rows in results.items():
        if method == reference:
            continue
        cells = []
        for keep in (lambda r: r["family"] == "reading", lambda r: r["size"] == "small", lambda r: True):
            chosen = [r for r in rows if keep(r) and r["sample_id"] in base]
            if not chosen:
                cells.append("–")
                continue
            mean, low, high = paired_difference_ci(
                [r["correct"] for r in chosen], [base[r["sample_id"]]["correct"] for r in chosen]
            )
            cells.append(f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def results_table(results: dict[str, list[dict[str, Any]]], references: Sequence[str] = ("vanilla",)) -> str:
    """Markdown: accuracy % [95% CI] per method x (family, size), plus the paired difference to each
    reference method present (vanilla by default) on the reading family, on small targets and overall."""
    groups = [("all", lambda r: True)]
    groups += [(f, lambda r, f=f: r["family"] == f) for f in FAMILIES]
    groups += [(f"size={s}", lambda r, s=s: r["size"] == s) for s in SIZES]
    header = "| method | " + " | ".join(name for name, _ in groups) + " |"
    lines = [header, "|" + "---|" * (len(groups) + 1)]
    for method, rows in results.items():
        cells = [_cell([r for r in rows if keep(r)]) for _, keep in groups]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for reference in references:
        if reference in results:
            lines += [""] + paired_table(results, reference)
    return "\n".join(lines)
