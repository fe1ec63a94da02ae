"""`laser evaluate`: merge rank files, check completeness, score, write metrics.json."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import RUN_CONFIG, merge_records
from .metrics import DEFAULT_METRICS, score

GROUP_MAX_VALUES = 12


def _expected_ids(run: dict[str, Any]) -> list[str] | None:
    """Sample ids of the run's dataset, or None when its annotations cannot be read any more."""
    from ..data import read_annotations
    from ..paths import resolve_path

    data = run.get("data") or {}
    try:
        samples = read_annotations(data["format"], resolve_path(data["annotations"]), "skip")
    except Exception:
        return None
    limit = data.get("limit")
    samples = samples[:limit] if limit else samples
    return [s.sample_id for s in samples]


def group_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """`meta.<key>` fields with a few distinct string values (question family, size bucket ...)."""
    values: dict[str, set] = defaultdict(set)
    for r in records:
        for key, value in (r.get("meta") or {}).items():
            if isinstance(value, (str, bool)):
                values[key].add(value)
    return [f"meta.{k}" for k, v in sorted(values.items()) if 1 < len(v) <= GROUP_MAX_VALUES]


def _field(record: dict[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def evaluate(output_dir: str | Path, metric: str | None = None, by: list[str] | None = None) -> dict[str, Any]:
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {str(folder)!r} does not exist")
    config_path = folder / RUN_CONFIG
    run = json.loads(config_path.read_text()) if config_path.is_file() else {}
    expected = _expected_ids(run) if run else None
    records, report = merge_records(folder, expected)
    if not records:
        raise ValueError(f"{folder} holds no predictions (predictions.rank*.jsonl)")
    data = run.get("data") or {}
    metric = metric or data.get("metric") or DEFAULT_METRICS.get(data.get("format", "jsonl"), "exact")
    result: dict[str, Any] = {
        "run": str(folder),
        "model": (run.get("model") or {}).get("name_or_path"),
        "method": (run.get("method") or {}).get("name"),
        "dataset": data.get("annotations"),
        "metric": metric,
        "overall": score(records, metric),
        "paths": dict(sorted(_counts(records, "path").items())),
        "report": report,
        "complete": not report.get("missing") and expected is not None,
    }
    groups = {}
    for key in by if by is not None else group_keys(records):
        buckets = defaultdict(list)
        for r in records:
            buckets[str(_field(r, key))].append(r)
        groups[key] = {value: score(rs, metric) for value, rs in sorted(buckets.items())}
    result["groups"] = groups
    (folder / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _counts(records, key):
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[str(r.get(key))] += 1
    return counts


_RATES = {"precision": "precision", "recall": "recall", "f1": "F1", "yes_ratio": "yes ratio"}


def _extras(overall: dict[str, Any]) -> str:
    """The overall figures beyond accuracy (POPE precision/recall/F1/yes ratio, unparsed answers ...)."""
    parts = []
    if overall.get("convention"):
        parts.append(f"{overall['convention']} convention")
    for key, name in _RATES.items():
        if overall.get(key) is not None:
            parts.append(f"{name} {100 * overall[key]:.1f}")
    for key in ("other", "unparsed", "excluded"):
        if overall.get(key):
            parts.append(f"{key} {overall[key]}")
    return "   ".join(parts)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the overall score and the per-group scores."""

    def row(name: str, s: dict[str, Any]) -> str:
        acc = s.get("accuracy")
        ci = s.get("ci95")
        acc_text = "   n/a" if acc is None else f"{100 * acc:6.1f}"
        ci_text = "" if not ci else f"[{100 * ci[0]:5.1f}, {100 * ci[1]:5.1f}]"
        return f"{name:<28} {s.get('n', 0):>6} {acc_text}  {ci_text}"

    lines = [
        f"run: {result['run']}   method: {result['method']}   metric: {result['metric']}",
        f"{'group':<28} {'n':>6} {'acc %':>6}  95% CI",
        row("overall", result["overall"]),
    ]
    extras = _extras(result["overall"])
    if extras:
        lines.append(f"{'':<28} {extras}")
    for key, buckets in result["groups"].items():
        for value, s in buckets.items():
            lines.append(row(f"{key.removeprefix('meta.')}={value}", s))
    report = result["report"]
    missing = report.get("missing") or []
    lines.append(
        f"paths: {result['paths']}   duplicates dropped: {len(report.get('duplicates') or [])}   "
        f"missing: {len(missing)}   errors: {result['overall'].get('errors', 0)}"
    )
    return "\n".join(lines)
