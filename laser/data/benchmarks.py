"""Readers for the official annotation files of the supported benchmarks.

Each reader takes the file (or folder) exactly as the benchmark distributes it and returns
`Annotations` of `VQASample`s whose `image` is relative to the benchmark's usual image folder.
Test splits that ship without answers are read with `answers=[]` (they can be predicted, not scored).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from .parsing import (
    Annotations,
    BadEntry,
    as_object,
    collect,
    document_list,
    id_field,
    jsonl_entries,
    load_json,
    require,
    str_field,
    str_list,
)
from .samples import VQASample, choice_letter

VSTAR_CATEGORIES = ("direct_attributes", "relative_position")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def _optional_answers(obj: dict[str, Any], key: str) -> list[str]:
    return str_list(obj, key) if obj.get(key) is not None else []


def _pick(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: obj[key] for key in keys if key in obj}


# ------------------------------------------------------------------ TextVQA
def read_textvqa(path: Path, on_error: str = "raise") -> Annotations:
    """TextVQA `TextVQA_0.5.1_{train,val,test}.json`: `{"data": [{question_id, image_id, question, answers}]}`.

    Images are `<image_id>.jpg` (the val split's images live in `train_images/`).
    """

    def build(entry: Any) -> VQASample:
        obj = as_object(entry)
        image_id = str_field(obj, "image_id")
        return VQASample(
            sample_id=id_field(obj, "question_id"),
            image=f"{image_id}.jpg",
            question=str_field(obj, "question"),
            answers=_optional_answers(obj, "answers"),
            meta={"image_id": image_id},
        )

    data = document_list(load_json(path), path, "data")
    return collect(path, ((f"data[{i}]", e) for i, e in enumerate(data)), build, on_error)


# --------------------------------------------------------------------- POPE
def read_pope(path: Path, on_error: str = "raise") -> Annotations:
    """POPE `coco_pope_{random,popular,adversarial}.json` (JSON lines: question_id, image, text, label).

    The reference answer is the label, "yes" or "no"; it is also kept in `meta["label"]`.
    """

    def build(entry: Any) -> VQASample:
        obj = as_object(entry)
        label = str_field(obj, "label").strip().lower()
        if label not in ("yes", "no"):
            raise BadEntry(f"key 'label' is {obj['label']!r}; expected 'yes' or 'no'")
        question_key = "text" if "text" in obj or "question" not in obj else "question"
        meta = {"label": label, **_pick(obj, ("category",))}
        return VQASample(
            sample_id=id_field(obj, "question_id"),
            image=str_field(obj, "image"),
            question=str_field(obj, question_key),
            answers=[label],
            meta=meta,
        )

    return collect(path, jsonl_entries(path), build, on_error)


# ------------------------------------------------------------------ A-OKVQA
def _coco_folder(path: Path) -> str:
    name = path.name.lower()
    for split in ("train", "test"):
        if split in name:
            return f"{split}2017"
    return "val2017"


def read_aokvqa(
    path: Path, on_error: str = "raise", multiple_choice: bool = True, image_dir: str | None = None
) -> Annotations:
    """A-OKVQA `aokvqa_v1p0_{split}.json`: a list of {question_id, image_id, question, choices,
    correct_choice_idx, direct_answers}.

    Images are `<image_dir>/<image_id:012d>.jpg` under the COCO 2017 root; `image_dir` defaults to
    the split named in the file name (train2017, test2017, else val2017). With `multiple_choice`
    the sample carries the choices and the correct letter; otherwise it is a direct-answer sample
    scored against the 10 `direct_answers` (the choices stay in `meta`).
    """
    folder = image_dir if image_dir is not None else _coco_folder(path)

    def build(entry: Any) -> VQASample:
        obj = as_object(entry)
        image_id = require(obj, "image_id")
        if isinstance(image_id, str) and image_id.isdigit():
            image_id = int(image_id)
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise BadEntry(f"key 'image_id' is {image_id!r}; expected an integer COCO image id")
        choices = str_list(obj, "choices", min_len=2)
        direct = _optional_answers(obj, "direct_answers")
        meta: dict[str, Any] = {"image_id": image_id, "direct_answers": direct}
        meta.update(_pick(obj, ("difficult_direct_answer",)))
        letter: list[str] = []
        if obj.get("correct_choice_idx") is not None:
            index = obj["correct_choice_idx"]
            if not isinstance(index, int) or not 0 <= index < len(choices):
                raise BadEntry(f"key 'correct_choice_idx' is {index!r}; expected 0..{len(choices) - 1}")
            letter = [choice_letter(index)]
            meta["correct_choice"] = choices[index]
        if not multiple_choice:
            meta["choices"] = choices
        return VQASample(
            sample_id=id_field(obj, "question_id"),
            image=f"{folder}/{image_id:012d}.jpg",
            question=str_field(obj, "question"),
            answers=letter if multiple_choice else direct,
            choices=choices if multiple_choice else None,
            meta=meta,
        )

    data = document_list(load_json(path), path, None)
    return collect(path, ((f"entry {i}", e) for i, e in enumerate(data)), build, on_error)


# ------------------------------------------------------------------ V* Bench
def _shuffled_order(sample_id: str, n: int, seed: int) -> list[int]:
    """A permutation of range(n) fixed by (seed, sample_id), the same in every process and run."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    order = list(range(n))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def _vstar_image(folder: Path, stem: str) -> str:
    for suffix in _IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return f"{stem}{suffix}"
    return f"{stem}.jpg"  # missing: the dataset reports it when loading


def read_vstar(path: Path, on_error: str = "raise", shuffle: bool = True, seed: int = 0) -> Annotations:
    """V* Bench: a folder with `direct_attributes/` and `relative_position/`, each holding
    `<name>.jpg` + `<name>.json` (`{"question", "options": [...], ...}`, first option correct).

    Samples are multiple choice, id `<category>/<name>`. Because the correct option always comes
    first in the files, a model that always says "A" would score 100%; `shuffle` (default) reorders
    the options with a permutation fixed by `seed` and the sample id, so runs stay comparable.
    The unshuffled correct text is kept in `meta["correct_choice"]`.
    """
    if not path.is_dir():
        raise ValueError(f"{path}: V* Bench annotations must be the benchmark folder, not a file")
    present = [name for name in VSTAR_CATEGORIES if (path / name).is_dir()]
    if not present:
        raise ValueError(
            f"{path}: no {' or '.join(n + '/' for n in VSTAR_CATEGORIES)} subfolder; "
            "expected the unpacked vstar_bench folder"
        )

    def entries():
        for category in present:
            for json_path in sorted((path / category).glob("*.json")):
                where = f"{category}/{json_path.name}"
                try:
                    yield where, (category, json_path.stem, load_json(json_path))
                except ValueError as err:
                    yield where, BadEntry(str(err))

    def build(entry: tuple[str, str, Any]) -> VQASample:
        category, stem, doc = entry
        obj = as_object(doc)
        options = str_list(obj, "options", min_len=2)
        sample_id = f"{category}/{stem}"
        order = _shuffled_order(sample_id, len(options), seed) if shuffle else list(range(len(options)))
        meta = {k: v for k, v in obj.items() if k not in ("question", "options", "image")}
        meta.update(category=category, correct_choice=options[0])
        return VQASample(
            sample_id=sample_id,
            image=f"{category}/{_vstar_image(path / category, stem)}",
            question=str_field(obj, "question"),
            answers=[choice_letter(order.index(0))],
            choices=[options[i] for i in order],
            meta=meta,
        )

    return collect(path, entries(), build, on_error)


# ---------------------------------------------------------------------- GQA
def read_gqa(path: Path, on_error: str = "raise") -> Annotations:
    """GQA `{split}_balanced_questions.json`: `{qid: {imageId, question, answer, ...}}`; image `<imageId>.jpg`."""

    def build(entry: tuple[str, Any]) -> VQASample:
        qid, value = entry
        obj = as_object(value)
        image_id = id_field(obj, "imageId")
        answer = obj.get("answer")
        answers = [str_field(obj, "answer")] if answer is not None else []
        meta = {"image_id": image_id, **_pick(obj, ("types", "fullAnswer", "isBalanced"))}
        return VQASample(
            sample_id=qid,
            image=f"{image_id}.jpg",
            question=str_field(obj, "question"),
            answers=answers,
            meta=meta,
        )

    doc = load_json(path)
    if not isinstance(doc, dict):
        raise ValueError(
            f"{path}: expected a JSON object mapping question id -> question, got {type(doc).__name__}"
        )
    return collect(path, ((f"question {qid!r}", (str(qid), v)) for qid, v in doc.items()), build, on_error)


# ------------------------------------------------------------------- DocVQA
def read_docvqa(path: Path, on_error: str = "raise") -> Annotations:
    """DocVQA `{split}_v1.0.json`: `{"data": [{questionId, question, image, answers}]}`; `image` is relative
    (e.g. `documents/abc_1.png`) to the split folder."""

    def build(entry: Any) -> VQASample:
        obj = as_object(entry)
        meta = _pick(obj, ("docId", "question_types", "ucsf_document_id", "ucsf_document_page_no"))
        return VQASample(
            sample_id=id_field(obj, "questionId"),
            image=str_field(obj, "image"),
            question=str_field(obj, "question"),
            answers=_optional_answers(obj, "answers"),
            meta=meta,
        )

    data = document_list(load_json(path), path, "data")
    return collect(path, ((f"data[{i}]", e) for i, e in enumerate(data)), build, on_error)
