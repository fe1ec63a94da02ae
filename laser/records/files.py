"""Crash-safe prediction files: one JSON line per sample, per rank, fsynced after every batch.

A run that dies (preemption, OOM, Ctrl-C) leaves complete lines plus at most one torn last
line per file; `read_records` ignores that line, the writer cuts it off before appending, and
`completed_ids` tells a resumed run which samples to skip. A record with `"retryable": true` (the
sample failed for want of memory or on a device fault, not because of its input) is not done: a
rerun answers it again and the answer supersedes it. `write_run_config` keeps a resumed run from
silently mixing predictions made with different settings.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

RUN_CONFIG = "run_config.json"
_PREDICTION_FILE = re.compile(r"^predictions\.rank(\d+)\.jsonl$")
_BLANK = b" \t\r\n\x00"  # a crash can leave NUL padding after the last write
MODES = ("new", "resume", "overwrite")
DEFAULT_IGNORE = (
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "output_dir",
    "batch_size",
    "num_workers",
    "limit",
    "resume",
    "overwrite",
    "model.device_map",
    "model.max_memory",
    "trainer.logger",
    "trainer.enable_progress_bar",
)
"""Config keys that do not change any single prediction, so a run may resume across them.
An entry matches the key itself, anything under it, and any key ending in ".<entry>"."""


# ------------------------------------------------------------------ files
def prediction_path(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / f"predictions.rank{rank}.jsonl"


def prediction_files(output_dir: str | Path) -> list[Path]:
    """The `predictions.rank<R>.jsonl` files of a run, by rank (rank 10 after rank 2)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PREDICTION_FILE.match(p.name))]
    return [path for _, path in sorted(found)]


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _iter_file(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, record)`; an unreadable last line is a torn write and skipped, an
    unreadable line before it is corruption and a `ValueError` naming the file and line."""
    lines = path.read_bytes().split(b"\n")
    filled = [i for i, line in enumerate(lines) if line.strip(_BLANK)]
    for i in filled:
        record = _parse_record(lines[i].strip(_BLANK))
        if record is None:
            if i == filled[-1]:
                return
            raise ValueError(
                f"{path}, line {i + 1}: not a JSON object; only the last line of a prediction file may be "
                "incomplete, so this file was edited or corrupted: fix or delete that line"
            )
        yield i + 1, record


def _iter_records(output_dir: str | Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in prediction_files(output_dir):
        for number, record in _iter_file(path):
            yield path, number, record


def read_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of every rank file, rank by rank, ignoring a torn last line per file."""
    return [record for _, _, record in _iter_records(output_dir)]


def _sample_id(record: Mapping[str, Any], where: str) -> str:
    if record.get("sample_id") is None:
        raise ValueError(f"{where}: record has no 'sample_id' (keys: {', '.join(record)})")
    return str(record["sample_id"])


def is_retryable_record(record: Mapping[str, Any]) -> bool:
    """True for an error record whose sample should be answered again (`"retryable": true`)."""
    return record.get("retryable") is True


def completed_ids(output_dir: str | Path) -> set[str]:
    """Ids already written (for resume). A record with an `error` counts as done (its input is at
    fault), unless it is retryable (out of memory, a device fault)."""
    return {
        _sample_id(r, f"{path}, line {n}") for path, n, r in _iter_records(output_dir) if not is_retryable_record(r)
    }


def merge_records(
    output_dir: str | Path, expected_ids: Iterable[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All ranks' records de-duplicated by `sample_id` (the first copy wins), with a report.

    Duplicates are normal under DDP (the distributed sampler pads ranks by repeating samples)
    and after a resume that overlapped. A retryable record (see `is_retryable_record`) is superseded by
    any later record of its sample, and a sample that has only retryable records is left out of
    the records (it is not finished: listed in `retryable`, and in `missing` when expected).
    With `expected_ids` the records come back in that order (unexpected ones last) and the
    report lists `missing` and `unexpected` ids.
    Report keys: files, lines, unique, duplicates ({id: extra copies}), errors (records with an
    error), retryable (ids waiting for a retry), missing, unexpected (both None without
    `expected_ids`).
    """
    first: dict[str, dict[str, Any]] = {}
    waiting: dict[str, dict[str, Any]] = {}
    duplicates: dict[str, int] = {}
    lines = 0
    for path, number, record in _iter_records(output_dir):
        lines += 1
        sample_id = _sample_id(record, f"{path}, line {number}")
        if sample_id in first or sample_id in waiting:
            duplicates[sample_id] = duplicates.get(sample_id, 0) + 1
        if sample_id in first:
            continue
        if is_retryable_record(record):
            waiting.setdefault(sample_id, record)
        else:
            first[sample_id] = record
            waiting.pop(sample_id, None)
    report: dict[str, Any] = {
        "files": len(prediction_files(output_dir)),
        "lines": lines,
        "unique": len(first),
        "duplicates": duplicates,
        "errors": sum(r.get("error") is not None for r in first.values()),
        "retryable": list(waiting),
        "missing": None,
        "unexpected": None,
    }
    records = list(first.values())
    if expected_ids is not None:
        expected = [
            str(i)
            for i in (sorted(expected_ids) if isinstance(expected_ids, (set, frozenset)) else expected_ids)
        ]
        expected_set = set(expected)
        report["missing"] = [i for i in expected if i not in first]
        report["unexpected"] = [i for i in first if i not in expected_set]
        records = [first[i] for i in expected if i in first] + [first[i] for i in report["unexpected"]]
    return records, report


def repair_torn_tail(path: str | Path) -> int:
    """Make a prediction file end with a complete line; returns how many bytes it got shorter.

    An unreadable last line (a write cut short) is truncated away; a readable one missing its
    newline gets one, so the next append starts on a fresh line.
    """
    path = Path(path)
    data = path.read_bytes()
    end = len(data.rstrip(_BLANK))
    start = data.rfind(b"\n", 0, end) + 1
    if end and _parse_record(data[start:end].strip(_BLANK)) is not None:
        keep, newline = end, True
    else:
        keep, newline = start, False
    if keep == len(data) - 1 and newline and data.endswith(b"\n"):
        return 0
    if keep == len(data) and not newline:
        return 0
    with path.open("r+b") as handle:
        handle.truncate(keep)
        if newline:
            handle.seek(keep)
            handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return max(0, len(data) - keep - newline)


# ----------------------------------------------------------------- writer
def _json_default(value: Any) -> Any:
    """Values the model side may leave in a record: tensors/arrays/numpy scalars, paths, sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serialisable")


def _encode(record: Any) -> bytes:
    if not isinstance(record, Mapping):
        raise TypeError(f"a prediction record must be a dict, got {type(record).__name__}")
    sample_id = _sample_id(record, "prediction record")
    try:
        return (json.dumps(record, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"prediction record {sample_id!r} cannot be written as JSON: {err}") from None


class RecordFile:
    """Appends records to `<output_dir>/predictions.rank<R>.jsonl`: one write and one fsync per call, so a
    crash loses at most the records in flight; a torn tail left by an earlier crash is cut off when the
    file is first opened."""

    def __init__(self, output_dir: str | Path, rank: int) -> None:
        self.path = prediction_path(output_dir, rank)
        self._handle: Any = None

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        payload = b"".join(_encode(record) for record in records)
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                repair_torn_tail(self.path)
            self._handle = self.path.open("ab")
        self._handle.write(payload)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# ------------------------------------------------------------- run config
def output_mode(resume: bool, overwrite: bool) -> Literal["new", "resume", "overwrite"]:
    """The `write_run_config` mode of a run's `resume` / `overwrite` flags (both set is an error)."""
    if resume and overwrite:
        raise ValueError("resume=true and overwrite=true contradict each other; choose one")
    return "overwrite" if overwrite else "resume" if resume else "new"


class RunConfigMismatch(ValueError):
    """The output folder holds predictions made with a different config."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") or key.endswith(f".{p}") for p in ignore)


def config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORE
) -> list[str]:
    """`"key: old -> new"` for every dotted key that differs, skipping `ignore`d keys. A key absent
    on one side and unset (null, empty) on the other is no difference (a key added in a later
    version, at its default)."""
    ignore = tuple(ignore)
    before, after = _flatten(_as_json(old)), _flatten(_as_json(new))
    absent = "<absent>"
    out = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key, absent), after.get(key, absent)
        if _ignored(key, ignore) or a == b or (a is absent and _unset(b)) or (b is absent and _unset(a)):
            continue
        out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _unset(value: Any) -> bool:
    return value is None or value == {} or value == []


def _as_json(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(dict(config), default=str))


def run_config_action(
    output_dir: str | Path,
    config: Mapping[str, Any],
    mode: Literal["new", "resume", "overwrite"] = "new",
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> tuple[str, list[str]]:
    """What `write_run_config` would do, touching nothing: ("new" | "resumed" | "overwritten", differences).

    Raises `RunConfigMismatch` where it would (mode "new", existing predictions, other config).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {', '.join(MODES)}")
    folder = Path(output_dir)
    has_predictions = any(path.stat().st_size > 0 for path in prediction_files(folder))
    if mode == "overwrite":
        return ("overwritten" if has_predictions else "new"), []
    if not has_predictions:
        return "new", []
    config_path = folder / RUN_CONFIG
    if config_path.is_file():
        try:
            previous = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{config_path} is not valid JSON ({err}); fix or delete it") from None
        differences = config_differences(previous, config, ignore)
    else:
        differences = [f"no {RUN_CONFIG}: the existing predictions' config is unknown"]
    if differences and mode == "new":
        raise RunConfigMismatch(
            f"{folder} already holds predictions from a different run config "
            f"({'; '.join(differences)}). Pass resume=true to continue them with this config, "
            "or overwrite=true to delete them and start over (or choose another output_dir).",
            differences,
        )
    return "resumed", differences


def write_run_config(
    output_dir: str | Path,
    config: Mapping[str, Any],
    mode: Literal["new", "resume", "overwrite"] = "new",
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> str:
    """Save `config` as `<output_dir>/run_config.json`, guarding existing predictions.

    If the folder already holds predictions: with the same config (up to `ignore`d keys) the
    run resumes; with a different or unknown (no run_config.json) config, mode "new" raises
    `RunConfigMismatch` naming the differing keys, "resume" continues with a warning, and
    "overwrite" deletes the old prediction files first. Call it in one process only (rank 0);
    the file is written through a temporary file of this process, then renamed.
    Returns what happened: "new", "resumed" or "overwritten".
    """
    action, differences = run_config_action(output_dir, config, mode, ignore)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "overwrite":
        for path in prediction_files(folder):
            path.unlink()
    if differences:
        warnings.warn(f"resuming {folder} with a changed config: {'; '.join(differences)}", stacklevel=2)
    config_path = folder / RUN_CONFIG
    tmp = config_path.with_name(f".{RUN_CONFIG}.{os.getpid()}.tmp")  # one per process
    tmp.write_text(json.dumps(_as_json(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_path)
    return action
