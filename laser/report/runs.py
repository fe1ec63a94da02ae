"""Run folders as `Run`s: merged records, per-sample scores and short labels for model, dataset, method."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..records.files import RUN_CONFIG, merge_records
from ..records.metrics import DEFAULT_METRICS, score

# Folder or file names that say nothing on their own: the parent folder is kept in the label.
GENERIC_NAMES = frozenset(
    {"model", "models", "checkpoint", "weights", "hf", "final", "annotations", "eval", "val", "test",
     "questions", "data", "dev", "train", "split"}
)  # fmt: skip
VANILLA = "vanilla"


def short_name(reference: str | None, strip_suffix: bool = False) -> str:
    """A readable name for a model reference or annotation path: its last component, with the
    parent kept when the last is generic ("testbed/model", "testbed/eval")."""
    if not reference:
        return "?"
    text = str(reference).removeprefix("laser:").rstrip("/\\")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not parts:
        return text
    name = PurePosixPath(parts[-1]).stem if strip_suffix else parts[-1]
    if name.lower() in GENERIC_NAMES and len(parts) > 1:
        name = f"{parts[-2]}/{name}"
    return name


@dataclass
class Run:
    """One prediction run: where it is, what it ran (keys identify, labels display) and its records."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    report: dict[str, Any]
    model_key: str
    dataset_key: str
    method: str
    metric: str
    model: str = ""
    dataset: str = ""
    label: str = ""  # the method's display name (the method, or "method [folder]" when ambiguous)
    _values: dict[str, float] | None = field(default=None, repr=False)

    @property
    def is_vanilla(self) -> bool:
        return self.method == VANILLA

    @property
    def num_layers(self) -> int | None:
        """Decoder layers of the run's model, from the length of its VAQ vectors (None without VAQ)."""
        lengths = [len(r["vaq"]) for r in self.records if r.get("vaq")]
        return max(lengths) if lengths else None

    @property
    def gate_depth(self) -> float | None:
        """`gate.depth` of the method when it gates the decode path (`decode.mode: auto`)."""
        method = self.config.get("method") or {}
        if (method.get("decode") or {}).get("mode") != "auto":
            return None
        return float((method.get("gate") or {}).get("depth", 0.5))

    def score(self, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """`laser.records.metrics.score` over the run's merged records."""
        return score(self.records, self.metric, n_boot=n_boot, seed=seed)

    def values(self) -> dict[str, float]:
        """Per-sample score (sample_id -> value in [0, 1]); samples without references are left out.

        Each value is `score` of the one record, so the mean equals the run's accuracy."""
        if self._values is None:
            self._values = {}
            for record in self.records:
                result = score([record], self.metric, n_boot=1)
                if result["accuracy"] is not None:
                    self._values[str(record["sample_id"])] = float(result["accuracy"])
        return self._values


class EmptyRun(ValueError):
    """A run folder that holds no predictions."""


def load_run(folder: str | Path, metric: str | None = None) -> Run:
    """Read a run folder (`run_config.json` and every rank's predictions, de-duplicated)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {str(folder)!r} does not exist")
    config_path = folder / RUN_CONFIG
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    records, report = merge_records(folder)
    if not records:
        raise EmptyRun(f"{folder} holds no predictions (predictions.rank*.jsonl)")
    model = config.get("model") or {}
    data = config.get("data") or {}
    method = (config.get("method") or {}).get("name") or next(
        (r["method"] for r in records if r.get("method")), folder.name
    )
    data_format = data.get("format", "jsonl")
    return Run(
        path=folder,
        config=config,
        records=records,
        report=report,
        model_key=model_key(model),
        dataset_key=str(data.get("annotations") or "?"),
        method=str(method),
        metric=metric or data.get("metric") or DEFAULT_METRICS.get(data_format, "exact"),
    )


def model_key(model: dict) -> str:
    """What identifies a run's model: its reference, and the processor settings it ran with when any were set
    ("laser:assets/testbed_qwen/model [max_pixels=16384]": the same weights at another resolution are
    another model to compare, with their own vanilla run)."""
    key = str(model.get("name_or_path") or "?")
    settings = model.get("processor") or {}
    if settings:
        key += " [" + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) + "]"
    return key


def model_label(key: str) -> str:
    """`short_name` of a `model_key`'s reference, its processor settings kept."""
    reference, sep, settings = key.partition(" [")
    return short_name(reference) + (f" [{settings}" if sep else "")


def _unique(keys: Iterable[str], name) -> dict[str, str]:
    """A label per distinct key; keys whose short names collide get " #2", " #3" ..."""
    labels: dict[str, str] = {}
    used: dict[str, int] = {}
    for key in keys:
        if key in labels:
            continue
        label = name(key)
        used[label] = used.get(label, 0) + 1
        labels[key] = label if used[label] == 1 else f"{label} #{used[label]}"
    return labels


def label_runs(runs: Sequence[Run]) -> None:
    """Fill `model`, `dataset` and `label` so that different keys never share a label."""
    models = _unique((r.model_key for r in runs), model_label)
    datasets = _unique((r.dataset_key for r in runs), lambda key: short_name(key, strip_suffix=True))
    counts: dict[tuple[str, str, str], int] = {}
    for run in runs:
        run.model, run.dataset = models[run.model_key], datasets[run.dataset_key]
        cell = (run.model_key, run.dataset_key, run.method)
        counts[cell] = counts.get(cell, 0) + 1
    for run in runs:
        ambiguous = counts[(run.model_key, run.dataset_key, run.method)] > 1
        run.label = f"{run.method} [{run.path.name}]" if ambiguous else run.method


def load_runs(folders: Sequence[str | Path], metric: str | None = None, skipped: list[str] | None = None) -> list[Run]:
    """Load and label several runs; the same folder given twice is read once. With a `skipped` list,
    a folder without predictions is left out and named there (an error only when none is left)."""
    seen: set[Path] = set()
    runs = []
    for folder in folders:
        resolved = Path(folder).resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            runs.append(load_run(folder, metric))
        except EmptyRun as err:
            if skipped is None:
                raise
            skipped.append(str(err))
    if not runs and skipped:
        raise EmptyRun("no run holds predictions: " + "; ".join(skipped))
    label_runs(runs)
    return runs


def vanilla_for(run: Run, runs: Sequence[Run]) -> Run | None:
    """The vanilla run of the same model and dataset (the first one given, when several)."""
    matches = [
        r for r in runs if r.is_vanilla and r.model_key == run.model_key and r.dataset_key == run.dataset_key
    ]
    if len(matches) > 1 and run is matches[0]:
        warnings.warn(
            f"{len(matches)} vanilla runs of {run.model} on {run.dataset}; differences use {matches[0].path}",
            stacklevel=2,
        )
    return matches[0] if matches else None
