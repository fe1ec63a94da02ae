"""Shared machinery for annotation readers: file decoding, field checks and error collection.

Every reader turns a file into `(where, entry)` pairs and a `build(entry) -> VQASample`
function; `collect` runs them so that every reader reports bad entries the same way: a
`ValueError` naming the file and the line/entry (`on_error="raise"`), or a message appended
to `Annotations.errors` and the entry skipped (`on_error="skip"`).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .samples import CHOICE_LETTERS, VQASample

ON_ERROR = ("raise", "skip")


class Annotations(list):
    """A `list[VQASample]` that also carries the messages of entries skipped with `on_error="skip"`."""

    def __init__(self, samples: Iterable[VQASample] = (), errors: Iterable[str] = ()) -> None:
        super().__init__(samples)
        self.errors: list[str] = list(errors)


class BadEntry(ValueError):
    """One annotation entry is unusable; `collect` adds the file and position to the message."""


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; expected one of {', '.join(ON_ERROR)}")


def collect(
    path: Path,
    entries: Iterable[tuple[str, Any]],
    build: Callable[[Any], VQASample],
    on_error: str = "raise",
) -> Annotations:
    """Build a sample from every entry, rejecting bad entries and duplicate `sample_id`s.

    `entries` yields `(where, entry)` where `where` locates the entry for messages ("line 7",
    "data[3]"); an entry that is already a `BadEntry` (say, a line that is not JSON) is reported
    as such. The first occurrence of a duplicated id is kept.
    """
    check_on_error(on_error)
    out = Annotations()
    first_seen: dict[str, str] = {}
    for where, entry in entries:
        try:
            if isinstance(entry, BadEntry):
                raise entry
            sample = build(entry)
            if sample.sample_id in first_seen:
                raise BadEntry(
                    f"duplicate sample_id {sample.sample_id!r} (first at {first_seen[sample.sample_id]}); "
                    "sample ids must be unique"
                )
        except ValueError as err:
            message = f"{path}, {where}: {err}"
            if on_error == "raise":
                raise ValueError(f"{message} (data.on_error=skip leaves bad entries out and lists them)") from None
            out.errors.append(message)
            continue
        first_seen[sample.sample_id] = where
        out.append(sample)
    return out


# ------------------------------------------------------------------ files
def load_json(path: Path) -> Any:
    """A whole JSON document; bad UTF-8 or bad JSON is a `ValueError` naming the file and line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 at byte {err.start}; expected a UTF-8 JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
        ) from None


def jsonl_entries(path: Path) -> Iterator[tuple[str, Any]]:
    """`("line N", object)` for every non-blank line; undecodable lines yield a `BadEntry`."""
    data = path.read_bytes()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield where, BadEntry(f"not valid UTF-8 at byte {err.start} of the line; expected UTF-8 text")
            continue
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as err:
            yield where, BadEntry(f"not valid JSON ({err.msg} at column {err.colno})")


def document_list(doc: Any, path: Path, key: str | None) -> list[Any]:
    """`doc[key]` (or `doc` itself when `key` is None), checked to be a list."""
    value = doc
    if key is not None:
        if not isinstance(doc, dict) or key not in doc:
            raise ValueError(f"{path}: expected a JSON object with a {key!r} list at the top level")
        value = doc[key]
    if not isinstance(value, list):
        where = f"{key!r}" if key else "the top level"
        raise ValueError(f"{path}: expected a list at {where}, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------- fields
def as_object(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise BadEntry(f"expected a JSON object, got {type(entry).__name__}")
    return entry


def require(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise BadEntry(f"missing required key {key!r} (present: {', '.join(map(repr, obj)) or 'none'})")
    return obj[key]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def str_field(obj: dict[str, Any], key: str) -> str:
    value = require(obj, key)
    if not isinstance(value, str):
        raise BadEntry(f"key {key!r} is {type(value).__name__} {value!r}; expected a string")
    return value


def id_field(obj: dict[str, Any], key: str) -> str:
    """An identifier: a string, or an integer turned into its decimal string."""
    value = require(obj, key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise BadEntry(f"key {key!r} is {value!r}; expected a non-empty string or an integer id")


def answer_text(value: Any, key: str) -> str:
    """An answer: a string, or a number written as text (annotations sometimes store `2`)."""
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value)
    raise BadEntry(f"key {key!r} holds {type(value).__name__} {value!r}; expected a string answer")


def str_list(obj: dict[str, Any], key: str, *, min_len: int = 0) -> list[str]:
    value = require(obj, key)
    if not isinstance(value, list):
        raise BadEntry(f"key {key!r} is {type(value).__name__}; expected a list of strings")
    if len(value) < min_len:
        raise BadEntry(f"key {key!r} has {len(value)} item(s); expected at least {min_len}")
    return [answer_text(item, key) for item in value]


def choice_answer(answer: str, choices: list[str]) -> str:
    """The correct option as a letter: `answer` may be a letter in range or the text of an option."""
    letters = CHOICE_LETTERS[: len(choices)]
    stripped = answer.strip()
    if len(stripped) == 1 and stripped.upper() in letters:
        return stripped.upper()
    if answer in choices:
        return letters[choices.index(answer)]
    raise BadEntry(
        f"answer {answer!r} is neither an option letter {letters[0]}-{letters[-1]} nor one of the choices {choices!r}"
    )


def meta_field(obj: dict[str, Any], key: str = "meta") -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEntry(f"key {key!r} is {type(value).__name__}; expected a JSON object")
    return dict(value)
