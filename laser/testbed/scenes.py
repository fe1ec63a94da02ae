"""Deterministic fine-detail scenes: coloured boxes holding large digits on a cluttered background.

`make_scene(seed)` places 3-6 square boxes of mixed sizes (unique colours, distinct digits, so the
question decides the answer) on a 512 px canvas;
`render_scene(scene)` draws them (grey lines + speckle behind, a thick bitmap digit inside each box);
`make_questions(scene, rng)` asks `existence` ("Is there a green box?"), `reading` ("What digit is in
the red box?") and `relational` ("What digit is in the box left of the blue box?") questions. Each
question records its family, target box in scene pixels and a `size` bucket: the target's side at the
model input resolution (64 px by default): small < 6 px, medium < 12 px, large otherwise. For a "no"
existence answer the evidence is the whole image, so the target box is the full canvas ("large").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .glyphs import draw_digit

SCENE_SIZE = 512
MODEL_INPUT = 64
SMALL_MAX = 6.0  # model-input pixels (exclusive)
MEDIUM_MAX = 12.0

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 175, 45),
    "blue": (40, 90, 245),
    "yellow": (245, 215, 0),
    "purple": (155, 50, 215),
    "orange": (255, 135, 0),
}
COLOR_NAMES = tuple(COLORS)
# side ranges in scene pixels per bucket at 512 px -> 64 px (factor 8)
SIDE_RANGES = {"small": (24, 44), "medium": (52, 90), "large": (100, 168)}
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class Box:
    color: str
    digit: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def xyxy(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def side(self) -> int:
        return min(self.x1 - self.x0, self.y1 - self.y0)


@dataclass
class Scene:
    seed: int
    size: int
    boxes: list[Box] = field(default_factory=list)

    def by_color(self, color: str) -> Box | None:
        return next((b for b in self.boxes if b.color == color), None)


def size_bucket(box, scene_size: int = SCENE_SIZE, input_size: int = MODEL_INPUT) -> str:
    """small/medium/large by the box's shorter side once the scene is resized to `input_size`."""
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0) * input_size / scene_size
    if side < SMALL_MAX:
        return "small"
    return "medium" if side < MEDIUM_MAX else "large"


def _overlaps(a, b, margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_scene(seed: int, size: int = SCENE_SIZE, n_boxes: int | None = None) -> Scene:
    rng = random.Random(seed)
    n = n_boxes if n_boxes is not None else rng.randint(3, 6)
    colors = rng.sample(COLOR_NAMES, n)
    digits = rng.sample(range(10), n)  # distinct: two questions about two boxes have different answers
    scale = size / SCENE_SIZE
    placed: list[Box] = []
    for color, digit in zip(colors, digits):
        for _ in range(200):
            bucket = rng.choice(("small", "medium", "large"))
            lo, hi = SIDE_RANGES[bucket]
            side = max(8, round(rng.uniform(lo, hi) * scale))
            x0, y0 = rng.randint(4, size - side - 4), rng.randint(4, size - side - 4)
            cand = (x0, y0, x0 + side, y0 + side)
            if not any(_overlaps(cand, b.xyxy, round(10 * scale)) for b in placed):
                placed.append(Box(color, digit, *cand))
                break
    return Scene(seed=seed, size=size, boxes=placed)


def render_scene(scene: Scene) -> Image.Image:
    rng = random.Random(scene.seed * 7919 + 17)
    s = scene.size
    base = rng.randint(195, 235)
    img = Image.new("RGB", (s, s), (base, base, base))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(25, 50)):
        g = rng.randint(70, 175)
        pts = [(rng.randint(0, s), rng.randint(0, s)) for _ in range(2)]
        draw.line(pts, fill=(g, g, g), width=rng.choice((1, 1, 2)))
    arr = np.asarray(img).copy()
    nrng = np.random.default_rng(scene.seed)
    n_speck = int(0.02 * s * s)
    ys, xs = nrng.integers(0, s, n_speck), nrng.integers(0, s, n_speck)
    arr[ys, xs] = nrng.integers(60, 240, n_speck, dtype=np.uint8)[:, None]
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for b in scene.boxes:
        border = max(1, b.side // 28)
        draw.rectangle([b.x0, b.y0, b.x1 - 1, b.y1 - 1], fill=COLORS[b.color], outline=(20, 20, 20), width=border)
        draw_digit(draw, b.xyxy, b.digit, fill=(0, 0, 0))
    return img


def related_box(scene: Scene, anchor: Box, relation: str) -> Box | None:
    """The single box entirely `relation` of `anchor` whose span overlaps it on the other axis."""
    out = []
    for b in scene.boxes:
        if b is anchor:
            continue
        v_overlap = b.y0 < anchor.y1 and b.y1 > anchor.y0
        h_overlap = b.x0 < anchor.x1 and b.x1 > anchor.x0
        ok = {
            "left": b.x1 <= anchor.x0 and v_overlap,
            "right": b.x0 >= anchor.x1 and v_overlap,
            "above": b.y1 <= anchor.y0 and h_overlap,
            "below": b.y0 >= anchor.y1 and h_overlap,
        }[relation]
        if ok:
            out.append(b)
    return out[0] if len(out) == 1 else None


def _q(family, question, answer, box, scene, **extra) -> dict:
    meta = {"family": family, "size": size_bucket(box, scene.size), "target_box": list(box), "scene_seed": scene.seed}
    meta.update(extra)
    return {"question": question, "answers": [answer], "meta": meta}


def existence_question(scene: Scene, rng: random.Random, present: bool | None = None) -> dict:
    present = rng.random() < 0.5 if present is None else present
    absent = [c for c in COLOR_NAMES if scene.by_color(c) is None]
    if present or not absent:
        b = rng.choice(scene.boxes)
        return _q("existence", f"Is there a {b.color} box?", "yes", b.xyxy, scene)
    c = rng.choice(absent)
    return _q("existence", f"Is there a {c} box?", "no", [0, 0, scene.size, scene.size], scene)


def reading_question(scene: Scene, rng: random.Random, bucket: str | None = None) -> dict:
    boxes = [b for b in scene.boxes if bucket is None or size_bucket(b.xyxy, scene.size) == bucket]
    b = rng.choice(boxes or scene.boxes)
    return _q("reading", f"What digit is in the {b.color} box?", str(b.digit), b.xyxy, scene)


def relational_candidates(scene: Scene) -> list[tuple[Box, str, Box]]:
    out = []
    for anchor in scene.boxes:
        for rel in RELATIONS:
            t = related_box(scene, anchor, rel)
            if t is not None:
                out.append((anchor, rel, t))
    return out


def relational_question(scene: Scene, rng: random.Random) -> dict | None:
    cands = relational_candidates(scene)
    if not cands:
        return None
    anchor, rel, t = rng.choice(cands)
    q = f"What digit is in the box {RELATIONS[rel]} the {anchor.color} box?"
    return _q("relational", q, str(t.digit), t.xyxy, scene, anchor_box=anchor.xyxy, relation=rel)


def make_questions(scene: Scene, rng: random.Random, n: int = 4) -> list[dict]:
    """`n` distinct questions: one existence, one relational when the layout allows, reading otherwise."""
    out = [existence_question(scene, rng)]
    rel = relational_question(scene, rng)
    if rel is not None and n > 1:
        out.append(rel)
    buckets = ["small", "medium", "large"]
    rng.shuffle(buckets)
    tries = 0
    while len(out) < n and tries < 20:
        tries += 1
        q = reading_question(scene, rng, buckets[len(out) % 3])
        if all(q["question"] != o["question"] for o in out):
            out.append(q)
    return out
