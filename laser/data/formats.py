"""Annotation readers by format name: the generic JSONL format and the official benchmark files.

`read_annotations(format, path)` is the one entry point the data module uses; `READERS` maps each
format name to its reader so a config can name the format as a string.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .benchmarks import read_aokvqa, read_docvqa, read_gqa, read_pope, read_textvqa, read_vstar
from .parsing import (
    Annotations,
    BadEntry,
    answer_text,
    as_object,
    check_on_error,
    choice_answer,
    collect,
    id_field,
    jsonl_entries,
    meta_field,
    str_field,
    str_list,
)
from .samples import VQASample

_JSONL_KEYS = ("sample_id", "image", "question", "answers", "answer", "choices", "meta")


def read_jsonl(path: Path, on_error: str = "raise") -> Annotations:
    """The generic format: one JSON object per line with `sample_id`, `image`, `question`,
    `answers` (list) or `answer` (string), optional `choices` and `meta`.

    For a multiple-choice line the answer may be the option letter or the option text; it is
    stored as the letter. Keys outside the schema are kept in `meta` (an explicit `meta` wins),
    so extra per-sample fields such as a category survive into the predictions.
    """

    def build(entry: Any) -> VQASample:
        obj = as_object(entry)
        if "answers" in obj:
            answers = str_list(obj, "answers")
        elif "answer" in obj:
            answers = [answer_text(obj["answer"], "answer")]
        else:
            raise BadEntry("missing required key 'answers' (a list of strings) or 'answer' (a string)")
        choices = str_list(obj, "choices", min_len=2) if obj.get("choices") is not None else None
        if choices is not None:
            answers = [choice_answer(answer, choices) for answer in answers]
        extra = {key: value for key, value in obj.items() if key not in _JSONL_KEYS}
        return VQASample(
            sample_id=id_field(obj, "sample_id"),
            image=str_field(obj, "image"),
            question=str_field(obj, "question"),
            answers=answers,
            choices=choices,
            meta={**extra, **meta_field(obj)},
        )

    return collect(path, jsonl_entries(path), build, on_error)


READERS: dict[str, Callable[..., Annotations]] = {
    "jsonl": read_jsonl,
    "textvqa": read_textvqa,
    "pope": read_pope,
    "aokvqa": read_aokvqa,
    "vstar": read_vstar,
    "gqa": read_gqa,
    "docvqa": read_docvqa,
}
"""Format name -> reader `(path, on_error="raise", **options) -> Annotations`."""


def read_annotations(
    format: str, annotations_path: str | Path, on_error: str = "raise", **options: Any
) -> Annotations:
    """Read `annotations_path` with the reader registered as `format`.

    `on_error="raise"` stops at the first bad entry with a `ValueError` naming the file and the
    line/entry; `"skip"` leaves bad entries out and lists their messages in `.errors`.
    `options` go to the reader (e.g. `multiple_choice=False` for aokvqa, `shuffle=False` for vstar).
    """
    if format not in READERS:
        raise ValueError(f"unknown annotation format {format!r}; expected one of {', '.join(READERS)}")
    check_on_error(on_error)
    path = Path(annotations_path)
    if not path.exists():
        raise FileNotFoundError(f"{format} annotations {str(path)!r} do not exist")
    if format != "vstar" and path.is_dir():
        raise ValueError(f"{format} annotations {str(path)!r} is a folder; expected the annotation file")
    reader = READERS[format]
    try:
        inspect.signature(reader).bind(path, on_error, **options)
    except TypeError:
        allowed = [p for p in inspect.signature(reader).parameters if p not in ("path", "on_error")]
        raise ValueError(
            f"format {format!r} does not take option(s) {', '.join(sorted(options))}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        ) from None
    return reader(path, on_error, **options)


def default_image_root(format: str, annotations_path: str | Path) -> Path:
    """Where images are looked up when no image root is given: the V* folder itself, otherwise
    the folder holding the annotation file."""
    path = Path(annotations_path)
    return path if format == "vstar" or path.is_dir() else path.parent
