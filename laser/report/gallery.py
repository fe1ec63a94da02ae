"""The samples of a report's gallery: one entry per sample of a dataset, every run's answer on it.

`gallery_entries(runs, rest, seed)` -> (entries, notes). A sample enters when the runs' answers on it
differ (`disagree`), plus a seeded random page of `rest` samples of the others. Each entry holds the
question, references, `meta`, the image (`image`: its path, None when it cannot be found; `note` says
why), and per run: answer, score, crop box and masked cells in original pixels, chosen layer, path,
error. `focus` is the run whose layer and path the filters use (`laser`, see `figures.layer_run`),
`vanilla` its vanilla run; `outcome` is `focus_right` (it right, vanilla wrong), `vanilla_right`, or
None.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records.metrics import normalize_answer
from .figures import layer_run
from .overlay import focused_regions, mask_boxes
from .runs import Run, vanilla_for


@dataclass
class DatasetImages:
    """sample_id -> image path of one dataset (its annotations, as `laser show` reads them)."""

    paths: dict[str, Path]
    note: str | None = None  # why there are none (annotations missing or unreadable)


def dataset_images(run: Run) -> DatasetImages:
    """The image path of every sample of `run`'s dataset, from its run config's `data` keys."""
    from ..data import read_annotations
    from ..data.formats import default_image_root
    from ..paths import resolve_path

    data = run.config.get("data") or {}
    annotations = resolve_path(data.get("annotations"))
    if not annotations or not Path(annotations).exists():
        return DatasetImages({}, f"annotations {data.get('annotations')!r} not found: no images")
    try:
        samples = read_annotations(
            data.get("format", "jsonl"), Path(annotations), "skip", **(data.get("reader_options") or {})
        )
    except Exception as err:  # a report never fails for its pictures
        return DatasetImages({}, f"annotations {annotations} unreadable ({type(err).__name__}: {err}): no images")
    root = resolve_path(data.get("image_root"))
    root = Path(root) if root else default_image_root(data.get("format", "jsonl"), Path(annotations))
    return DatasetImages({s.sample_id: root / s.image for s in samples if getattr(s, "image", None)})


def _answer(record: dict[str, Any] | None) -> str | None:
    if record is None or record.get("prediction") is None:
        return None
    return normalize_answer(str(record["prediction"]))


def _regions_in_pixels(run: Run, record: dict[str, Any], size: tuple[int, int] | None) -> dict[str, Any]:
    """Crop box and masked cells of a record in original pixels (cells need the image size)."""
    out: dict[str, Any] = {"box": record.get("box"), "mask": []}
    if size and record.get("masked_cells"):
        crop_input = ((run.config.get("method") or {}).get("crop") or {}).get("input", "crop")
        regions = focused_regions(record.get("box"), size, crop_input)
        out["mask"] = [[round(v, 1) for v in cell] for cell in mask_boxes(record["masked_cells"], regions, size)]
    return out


def run_cell(run: Run, record: dict[str, Any] | None, size: tuple[int, int] | None) -> dict[str, Any] | None:
    """One run's part of a gallery entry (None: the run has no record of the sample)."""
    if record is None:
        return None
    value = run.values().get(str(record["sample_id"]))
    return {
        "answer": record.get("prediction"),
        "score": value,
        "layer": record.get("layer"),
        "path": record.get("path"),
        "error": record.get("error"),
        **_regions_in_pixels(run, record, size),
    }


def _outcome(focus: Run | None, vanilla: Run | None, sample_id: str) -> str | None:
    if focus is None or vanilla is None or focus is vanilla:
        return None
    a, b = focus.values().get(sample_id), vanilla.values().get(sample_id)
    if a is None or b is None or a == b:
        return None
    return "focus_right" if a > b else "vanilla_right"


@dataclass
class DatasetGallery:
    """The runs of one dataset and what the gallery shows of it."""

    dataset: str
    runs: list[Run]
    focus: Run | None
    vanilla: Run | None
    disagree: list[str]
    rest: list[str]


def dataset_galleries(runs: Sequence[Run], rest: int, seed: int = 0) -> list[DatasetGallery]:
    """Per dataset: its runs, the focus / vanilla runs, the disagreeing samples and a random page
    (`rest` samples, seeded) of the others."""
    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset_key, []).append(run)
    galleries = []
    for members in by_dataset.values():
        focus = layer_run(members) or next((r for r in members if not r.is_vanilla), None)
        vanilla = vanilla_for(focus, members) if focus is not None else None
        by_id = [{str(r["sample_id"]): r for r in run.records} for run in members]
        ids = list(dict.fromkeys(i for records in by_id for i in records))
        disagree, agree = [], []
        for sample_id in ids:
            answers = {_answer(records.get(sample_id)) for records in by_id}
            (disagree if len(answers) > 1 else agree).append(sample_id)
        page = sorted(random.Random(seed).sample(range(len(agree)), min(rest, len(agree))))
        galleries.append(DatasetGallery(members[0].dataset, members, focus, vanilla, disagree, [agree[i] for i in page]))
    return galleries


def gallery_entries(gallery: DatasetGallery, images: DatasetImages, sizes: dict[str, tuple[int, int]]) -> list[dict]:
    """The entries of one dataset's gallery; `sizes` maps sample_id -> original (width, height)."""
    by_id = [{str(r["sample_id"]): r for r in run.records} for run in gallery.runs]
    entries = []
    for sample_id, shown in [*((i, "disagree") for i in gallery.disagree), *((i, "rest") for i in gallery.rest)]:
        first = next(records[sample_id] for records in by_id if sample_id in records)
        size = sizes.get(sample_id)
        focus_record = None
        if gallery.focus is not None:
            focus_record = by_id[gallery.runs.index(gallery.focus)].get(sample_id)
        entries.append({
            "id": sample_id,
            "dataset": gallery.dataset,
            "shown": shown,
            "question": first.get("question"),
            "answers": first.get("answers") or [],
            "meta": {k: v for k, v in (first.get("meta") or {}).items() if isinstance(v, (str, int, bool))},
            "size": list(size) if size else None,
            "layer": (focus_record or {}).get("layer"),
            "path": (focus_record or {}).get("path"),
            "outcome": _outcome(gallery.focus, gallery.vanilla, sample_id),
            "runs": [run_cell(run, records.get(sample_id), size) for run, records in zip(gallery.runs, by_id)],
        })
    return entries
