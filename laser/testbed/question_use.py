"""Does a model read the question? Two questions on one scene about two boxes with different digits.

A model that answers from a scene prior (say, the digit of the largest box) gives both questions of a
pair the same answer; one that reads the question answers them differently. `question_records` builds,
from the scenes of a testbed split, one reading question per box ("What digit is in the red box?") and
the pairs of medium/large boxes to compare; `question_use` answers them with vanilla decoding and
returns the shares; `layer_crop_hits` asks, per decoder layer, how often the crop made from that
layer's map holds the asked box's centre, against the crop made from the map of the pair's other
question (the same scene, another box): a map that ignores the question scores the same on both.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..loading import sample_seed
from ..method.config import LaserConfig
from ..method.engine import LaserEngine
from ..records.metrics import normalize_answer
from .benchmark import crop_contains_target
from .scenes import make_scene, size_bucket

PAIR_SIZES = ("medium", "large")
"""Target sizes whose digits a model can read on the whole scene: the pairs use these."""


@dataclass(frozen=True)
class QuestionSet:
    """One reading question per box of each scene (`records`), and the pairs to compare (indices into
    `records`: two medium/large boxes of one scene, different digits)."""

    records: list[dict[str, Any]]
    pairs: list[tuple[int, int]]


def question_records(split: Sequence[dict[str, Any]], pairs_per_scene: int = 3, seed: int = 0) -> QuestionSet:
    """Reading questions about every box of every scene of `split` (records of a testbed split: their
    `image` and `meta.scene_seed`), and up to `pairs_per_scene` pairs of medium/large boxes per scene
    (drawn with `seed`). Each record's `meta` holds the target's size, box, and the scene's largest box's
    digit (`largest_digit`; `is_largest` when the target is that box)."""
    images = {}
    for r in split:
        images.setdefault(int(r["meta"]["scene_seed"]), r["image"])
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    pairs: list[tuple[int, int]] = []
    for scene_seed, image in images.items():
        scene = make_scene(scene_seed)
        if not scene.boxes:
            continue
        largest = max(scene.boxes, key=lambda b: b.side)
        first = len(records)
        for b in scene.boxes:
            records.append({
                "sample_id": f"question-use-{scene_seed}-{b.color}",
                "image": image,
                "question": f"What digit is in the {b.color} box?",
                "answers": [str(b.digit)],
                "meta": {"family": "reading", "size": size_bucket(b.xyxy, scene.size), "target_box": b.xyxy,
                         "scene_seed": scene_seed, "largest_digit": str(largest.digit), "is_largest": b is largest},
            })
        readable = [i for i in range(first, len(records)) if records[i]["meta"]["size"] in PAIR_SIZES]
        candidates = [(i, j) for i, j in itertools.combinations(readable, 2)
                      if records[i]["answers"] != records[j]["answers"]]
        rng.shuffle(candidates)
        pairs += sorted(candidates[:pairs_per_scene])
    return QuestionSet(records, pairs)


def _images(records, image_root: Path) -> dict[str, Image.Image]:
    out = {}
    for r in records:
        if r["image"] not in out:
            out[r["image"]] = Image.open(Path(image_root) / r["image"]).convert("RGB")
    return out


def _answer(engine: LaserEngine, records, images, batch_size: int):
    preds = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        seeds = [sample_seed(0, r["sample_id"]) for r in chunk]
        preds += engine.answer_batch([images[r["image"]] for r in chunk], [r["question"] for r in chunk], seeds)
    return preds


def _share(flags: Sequence[bool]) -> dict[str, Any]:
    return {"share": sum(flags) / len(flags) if flags else None, "n": len(flags)}


def question_use(adapter, questions: QuestionSet, image_root: Path, batch_size: int = 32,
                 config: LaserConfig | None = None) -> dict[str, Any]:
    """Vanilla answers (or `config`'s) to every question of `questions`, and the figures:

    - `pairs_differ`: share of pairs answered differently;
    - `largest_given`: per target size, share of questions whose target is not the scene's largest box
      answered with the largest box's digit (`medium_large` pools medium and large);
    - `accuracy`: per target size, share answered correctly.
    """
    engine = LaserEngine(adapter, config or LaserConfig.preset("vanilla"))
    recs = questions.records
    answers = [normalize_answer(p.answer) for p in _answer(engine, recs, _images(recs, image_root), batch_size)]
    differ = [answers[i] != answers[j] for i, j in questions.pairs]
    largest: dict[str, list[bool]] = {"small": [], "medium": [], "large": [], "medium_large": []}
    accuracy: dict[str, list[bool]] = {"small": [], "medium": [], "large": []}
    for r, a in zip(recs, answers):
        size = r["meta"]["size"]
        accuracy[size].append(a == normalize_answer(r["answers"][0]))
        if not r["meta"]["is_largest"]:
            hit = a == normalize_answer(r["meta"]["largest_digit"])
            largest[size].append(hit)
            if size in PAIR_SIZES:
                largest["medium_large"].append(hit)
    return {
        "pairs_differ": _share(differ),
        "largest_given": {k: _share(v) for k, v in largest.items()},
        "accuracy": {k: _share(v) for k, v in accuracy.items()},
        "answers": answers,
    }


def layer_crop_hits(adapter, questions: QuestionSet, image_root: Path, layers: Sequence[int],
                    batch_size: int = 32, method: str = "laser_static") -> dict[int, dict[str, Any]]:
    """Per layer l: `own`, the share of the paired questions whose crop from layer l's map (the
    `method` preset at `vaq.layer=l`, answered directly) holds their target's centre; `other`, the share
    whose pair partner's crop (the same scene, the other box's question) holds it. A map that follows
    the question has own >> other."""
    index = sorted({i for pair in questions.pairs for i in pair})
    recs = [questions.records[i] for i in index]
    where = {i: k for k, i in enumerate(index)}
    images = _images(recs, image_root)
    out = {}
    for layer in layers:
        config = LaserConfig.preset(method, **{"vaq.select": "fixed", "vaq.layer": layer, "decode.mode": "direct"})
        boxes = [p.box for p in _answer(LaserEngine(adapter, config), recs, images, batch_size)]
        own, other = [], []
        for i, j in questions.pairs:
            for a, b in ((i, j), (j, i)):
                target = questions.records[a]["meta"]["target_box"]
                own.append(crop_contains_target({"box": boxes[where[a]], "target_box": target}, centre=True) is True)
                other.append(crop_contains_target({"box": boxes[where[b]], "target_box": target}, centre=True) is True)
        out[int(layer)] = {"own": _share(own), "other": _share(other)}
    return out


def question_use_lines(figures: dict[str, Any], crops: dict[int, dict[str, Any]] | None = None) -> list[str]:
    """Markdown lines of `question_use` (and `layer_crop_hits`) figures."""

    def pct(cell):
        return "–" if cell["share"] is None else f"{100 * cell['share']:.1f}% ({cell['n']})"

    lg, acc = figures["largest_given"], figures["accuracy"]
    lines = [
        "| pairs answered differently | largest box's digit given (medium/large targets, not the largest) "
        "| same, small targets | vanilla reading small / medium / large |",
        "|---|---|---|---|",
        f"| {pct(figures['pairs_differ'])} | {pct(lg['medium_large'])} | {pct(lg['small'])} "
        f"| {pct(acc['small'])} / {pct(acc['medium'])} / {pct(acc['large'])} |",
    ]
    if crops:
        lines += ["", "| layer | crop holds the asked box's centre | crop of the other box's question holds it |",
                  "|---|---|---|"]
        lines += [f"| {layer} | {pct(c['own'])} | {pct(c['other'])} |" for layer, c in sorted(crops.items())]
    return lines
