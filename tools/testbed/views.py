"""Training views for the testbed model: random zoomed crops of generated scenes (and whole scenes)
resized to the model input, one question per view (a reading view is often asked a second time about
another box of the same view: the same pixels, a different answer, so only the question decides), plus dense per-patch labels (digit and colour
under each patch centre) used as an auxiliary loss on the vision tower.

`sample_views(rng, n, stage)` -> dict(pixels uint8 [n,S,S,3], questions, answers, families,
sizes, described (the view in words, `_describe`), caption (the same, digits only where readable), digit_labels [n,g*g], color_labels [n,g*g], attn_targets [n,g*g] float masks,
box_view/box_digit/box_mask: one row per readable box for a box-pooled digit loss).
`sample_views(..., size=128)` renders the views at 128 px instead of the 64 px `MODEL_INPUT` (the Qwen2-VL
testbed's higher resolution): the label grid is then 16x16 (one cell per `GRID_PX` = 8 px, the patch of the
LLaVA testbed and the merged 2x2 patch of the Qwen2-VL one), and every size threshold (readable box, size
bucket, "where") is in pixels of the view as rendered, so a box too small to read at 64 px can be readable
at 128 px. Stage 0: one or two big boxes, stage 1: a few
boxes, stage 2: the evaluation distribution (3-6 boxes, zoom 1x-10x, whole scenes), stage "q": the same
scenes framed so that several readable boxes are in view, every reading view asked about two of them.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

from laser.testbed.scenes import (
    COLOR_NAMES,
    MODEL_INPUT,
    RELATIONS,
    Scene,
    make_scene,
    related_box,
    render_scene,
)

EVAL_SEED_BASE = 10_000_000
GRID = 8
GRID_PX = MODEL_INPUT // GRID
READABLE_MIN = 10.0  # model px: digit labels only for boxes at least this large in the view
STAGES = {
    # zoom = view side / box side; a patch-8 ViT reads glyphs of about one to three patches best
    0: dict(boxes=(1, 3), zoom=(2.0, 4.5), full=0.0),
    1: dict(boxes=(2, 4), zoom=(1.7, 6.0), full=0.15),
    2: dict(boxes=(3, 6), zoom=(1.5, 10.0), full=0.25),
    # the evaluation scenes framed so the question decides: whole scenes and crops around box pairs
    # (several readable boxes in view), every reading view asked about two boxes; the language model's stage
    "q": dict(boxes=(3, 6), zoom=(1.5, 10.0), full=0.4, pair=0.6, pairs=1.0),
    # grid-aligned warm-up for the ViT: a box spans exactly k x k patches, shifted by up to `jitter` px
    "a0": dict(boxes=(1, 3), aligned=(2, 3, 4), jitter=0, full=0.0, zoom=(2.0, 4.5)),
    "a1": dict(boxes=(2, 5), aligned=(2, 3, 4), jitter=4, full=0.0, zoom=(2.0, 4.5)),
}
FAMILY_WEIGHTS = {"reading": 0.38, "relational": 0.22, "existence": 0.14, "color": 0.1, "count": 0.06, "where": 0.1}
PAIR_CROP = 0.25  # share of zoomed views framed around a box pair (for relational questions)
PAIR_QUESTIONS = 0.6  # share of reading views asked a second time, about another box (a different answer)
SMALL_VIEW_SHARE = 0.15  # share of reading targets drawn among all boxes in view, small ones included


def _crop_for(rng: random.Random, scene: Scene, stage: dict, size: int = MODEL_INPUT) -> tuple[float, float, float]:
    """(x0, y0, side) of a square crop in scene pixels."""
    s = scene.size
    grid = size // GRID_PX
    if rng.random() < stage["full"] or not scene.boxes:
        return 0.0, 0.0, float(s)
    if "aligned" in stage:
        b = rng.choice(scene.boxes)
        k = rng.choice(stage["aligned"])
        side = b.side * size / (k * GRID_PX)
        px = side / size  # scene px per model px
        for _ in range(20):
            jx, jy = rng.randint(0, grid - k), rng.randint(0, grid - k)
            dx, dy = rng.uniform(-stage["jitter"], stage["jitter"]), rng.uniform(-stage["jitter"], stage["jitter"])
            x0, y0 = b.x0 - (jx * GRID_PX + dx) * px, b.y0 - (jy * GRID_PX + dy) * px
            if 0 <= x0 <= s - side and 0 <= y0 <= s - side:
                return x0, y0, side
    lo, hi = stage["zoom"]
    if len(scene.boxes) >= 2 and rng.random() < stage.get("pair", PAIR_CROP):
        a, b = rng.sample(scene.boxes, 2)
        ux0, uy0, ux1, uy1 = min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1)
        side = min(float(s), max(ux1 - ux0, uy1 - uy0) * rng.uniform(1.05, 2.0))
        cx0 = rng.uniform(max(0.0, ux1 - side), max(0.0, min(float(ux0), s - side)))
        cy0 = rng.uniform(max(0.0, uy1 - side), max(0.0, min(float(uy0), s - side)))
        return cx0, cy0, side
    b = rng.choice(scene.boxes)
    side = min(float(s), b.side * math.exp(rng.uniform(math.log(lo), math.log(hi))))
    side = max(side, b.side + 2.0)
    cx0 = rng.uniform(max(0.0, b.x1 - side), min(float(b.x0), s - side))
    cy0 = rng.uniform(max(0.0, b.y1 - side), min(float(b.y0), s - side))
    return cx0, cy0, side


def _view_boxes(scene: Scene, x0: float, y0: float, side: float, size: int = MODEL_INPUT):
    """Boxes in view coordinates (model px) with visibility: 'in', 'partial' or 'out'."""
    k = size / side
    out = []
    for b in scene.boxes:
        bx0, by0, bx1, by1 = (b.x0 - x0) * k, (b.y0 - y0) * k, (b.x1 - x0) * k, (b.y1 - y0) * k
        ix = max(0.0, min(bx1, size) - max(bx0, 0.0))
        iy = max(0.0, min(by1, size) - max(by0, 0.0))
        frac = ix * iy / max(1e-6, (bx1 - bx0) * (by1 - by0))
        vis = "in" if frac > 0.97 else ("out" if frac < 0.01 else "partial")
        out.append((b, (bx0, by0, bx1, by1), vis))
    return out


def _patch_labels(vboxes, size: int = MODEL_INPUT) -> tuple[np.ndarray, np.ndarray]:
    grid = size // GRID_PX
    digit = np.full(grid * grid, -100, dtype=np.int64)
    color = np.full(grid * grid, len(COLOR_NAMES), dtype=np.int64)
    cell = size / grid
    for b, (x0, y0, x1, y1), vis in vboxes:
        if vis == "out":
            continue
        readable = vis == "in" and min(x1 - x0, y1 - y0) >= READABLE_MIN
        for r in range(grid):
            cy = (r + 0.5) * cell
            if not (y0 <= cy < y1):
                continue
            for c in range(grid):
                cx = (c + 0.5) * cell
                if x0 <= cx < x1:
                    color[r * grid + c] = COLOR_NAMES.index(b.color)
                    if readable:
                        digit[r * grid + c] = b.digit
    # background patches: digit class 10 ("no digit")
    digit[color == len(COLOR_NAMES)] = 10
    return digit, color


def _patch_mask(vbox, size: int = MODEL_INPUT) -> np.ndarray:
    """Patches of the grid x grid view (grid = size / GRID_PX) that overlap `vbox` (all zero when None):
    attention targets."""
    grid = size // GRID_PX
    m = np.zeros((grid, grid), dtype=np.float32)
    if vbox is not None:
        cell = size / grid
        x0, y0, x1, y1 = (min(max(v, 0.0), size - 1e-3) for v in vbox)
        m[int(y0 // cell) : int(y1 // cell) + 1, int(x0 // cell) : int(x1 // cell) + 1] = 1.0
    return m.reshape(-1)


def _bucket(vbox) -> str:
    side = min(vbox[2] - vbox[0], vbox[3] - vbox[1])
    return "small" if side < 6 else ("medium" if side < 12 else "large")


def _reading_target(rng: random.Random, inn, exclude=None):
    """A reading target drawn independently of its size: uniform over the boxes fully in view that are
    at least medium at the model input (SMALL_VIEW_SHARE of the time over all of them, small included:
    a small box is not readable, and its digit is never another box's, since a scene's digits differ)."""
    pool = [v for v in inn if v[0] is not exclude]
    if rng.random() >= SMALL_VIEW_SHARE:
        pool = [v for v in pool if _bucket(v[1]) != "small"] or pool
    return rng.choice(pool) if pool else None


def _partner(rng: random.Random, q, vboxes):
    """A second reading question on the same view about another box (a different digit), or None."""
    if q[0] != "reading":
        return None
    inn = [v for v in vboxes if v[2] == "in"]
    first = next((v for v in inn if v[1] is q[4]), None)
    v = _reading_target(rng, inn, exclude=first[0] if first else None)
    if v is None:
        return None
    return "reading", f"What digit is in the {v[0].color} box?", str(v[0].digit), _bucket(v[1]), v[1]


def _question(rng: random.Random, vboxes, scene: Scene, size: int = MODEL_INPUT):
    """(family, question, answer, size, target box in view px or None) for one view, or None when nothing is well-defined."""
    inn = [v for v in vboxes if v[2] == "in"]
    partial = [v for v in vboxes if v[2] == "partial"]
    fam = rng.choices(list(FAMILY_WEIGHTS), weights=list(FAMILY_WEIGHTS.values()))[0]
    if fam == "reading" and inn:
        v = _reading_target(rng, inn)
        return "reading", f"What digit is in the {v[0].color} box?", str(v[0].digit), _bucket(v[1]), v[1]
    if fam == "relational" and len(inn) >= 2:
        sub = Scene(scene.seed, scene.size, [v[0] for v in inn + partial])
        cands = [(a, r, related_box(sub, a, r)) for a in sub.boxes for r in RELATIONS]
        in_ids = {id(v[0]) for v in inn}
        cands = [c for c in cands if c[2] is not None and id(c[2]) in in_ids]
        if cands:
            a, r, t = rng.choice(cands)
            vb = next(v[1] for v in inn if v[0] is t)
            return "relational", f"What digit is in the box {RELATIONS[r]} the {a.color} box?", str(t.digit), _bucket(vb), vb
    if fam == "existence":
        present = [v for v in inn]
        absent = [c for c in COLOR_NAMES if c not in {v[0].color for v in inn + partial}]
        if present and (rng.random() < 0.5 or not absent):
            v = rng.choice(present)
            return "existence", f"Is there a {v[0].color} box?", "yes", _bucket(v[1]), v[1]
        if absent:
            return "existence", f"Is there a {rng.choice(absent)} box?", "no", "large", None
    if fam == "color" and inn:
        v = rng.choice(inn)
        if sum(w[0].digit == v[0].digit for w in inn + partial) == 1:
            return "color", f"What color is the box with the digit {v[0].digit}?", v[0].color, _bucket(v[1]), v[1]
    if fam == "count" and inn and not partial:
        return "count", "How many boxes are there?", str(len(inn)), "large", None
    if fam == "where" and inn:
        v = rng.choice(inn)
        x0, y0, x1, y1 = v[1]
        dx, dy = (x0 + x1) / 2 - size / 2, (y0 + y1) / 2 - size / 2
        if max(abs(dx), abs(dy)) > 0.2 * size and abs(abs(dx) - abs(dy)) > 0.1 * size:
            ans = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("bottom" if dy > 0 else "top")
            return "where", f"Where is the {v[0].color} box?", ans, _bucket(v[1]), v[1]
    if inn:  # fallback: reading, about any box (never a rule that prefers the largest)
        v = _reading_target(rng, inn)
        return "reading", f"What digit is in the {v[0].color} box?", str(v[0].digit), _bucket(v[1]), v[1]
    return None


def _describe(vboxes, readable_only: bool = False) -> str:
    """The view in words, boxes in reading order: "red 3 , blue 7" (a box cut by the view's edge: "green -";
    with `readable_only`, also a box too small to read at the view's size)."""
    shown = [(vb, b, vis) for b, vb, vis in vboxes if vis != "out"]
    shown.sort(key=lambda t: (round((t[0][1] + t[0][3]) / 2 / GRID_PX), (t[0][0] + t[0][2]) / 2))

    def digit(vb, b, vis) -> str:
        small = min(vb[2] - vb[0], vb[3] - vb[1]) < READABLE_MIN
        return "-" if vis != "in" or (readable_only and small) else str(b.digit)

    return " , ".join(f"{b.color} {digit(vb, b, vis)}" for vb, b, vis in shown)


def _render_view(img: Image.Image, x0: float, y0: float, side: float, size: int) -> Image.Image:
    """The square crop (x0, y0, side) of a rendered scene, resized to size x size as the model sees it."""
    return img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side), reducing_gap=3.0)


def sample_turns(rng: random.Random, n: int, stage=2, turns: int = 3, size: int = MODEL_INPUT) -> dict:
    """`n` views, each asked up to `turns` different questions (one conversation per view: several boxes of
    one view asked about in one sequence, so the scene alone cannot answer them all).

    -> dict(pixels uint8 [n,S,S,3], digit_labels / color_labels [n,g*g] (as `sample_views`),
    turns: per view a list of (family, question, answer, size, target box in view px or None))."""
    st = STAGES[stage]
    pix = np.zeros((n, size, size, 3), dtype=np.uint8)
    digits, colors, conv = [], [], []
    while len(conv) < n:
        scene = make_scene(rng.randrange(EVAL_SEED_BASE), n_boxes=rng.randint(*st["boxes"]))
        img = render_scene(scene)
        for _ in range(4):
            if len(conv) >= n:
                break
            x0, y0, side = _crop_for(rng, scene, st, size)
            vboxes = _view_boxes(scene, x0, y0, side, size)
            asked: dict[str, tuple] = {}
            for _ in range(3 * turns):
                q = _question(rng, vboxes, scene, size)
                if q is not None and q[1] not in asked:
                    asked[q[1]] = q
                if len(asked) == turns:
                    break
            if not asked:
                continue
            pix[len(conv)] = np.asarray(_render_view(img, x0, y0, side, size))
            d, c = _patch_labels(vboxes, size)
            digits.append(d)
            colors.append(c)
            conv.append(list(asked.values()))
    return {"pixels": pix, "digit_labels": np.stack(digits), "color_labels": np.stack(colors), "turns": conv}


def sample_views(rng: random.Random, n: int, stage: int = 2, views_per_scene: int = 6, size: int = MODEL_INPUT) -> dict:
    st = STAGES[stage]
    grid = size // GRID_PX
    pix = np.zeros((n, size, size, 3), dtype=np.uint8)
    out = {"questions": [], "answers": [], "families": [], "sizes": [], "described": [], "caption": []}
    digits, colors, attn_t, box_rows = [], [], [], []
    i = 0
    while i < n:
        scene = make_scene(rng.randrange(EVAL_SEED_BASE), n_boxes=rng.randint(*st["boxes"]))
        img = render_scene(scene)
        for _ in range(views_per_scene):
            if i >= n:
                break
            x0, y0, side = _crop_for(rng, scene, st, size)
            vboxes = _view_boxes(scene, x0, y0, side, size)
            q = _question(rng, vboxes, scene, size)
            if q is None:
                continue
            view = _render_view(img, x0, y0, side, size)
            d, c = _patch_labels(vboxes, size)
            second = _partner(rng, q, vboxes) if rng.random() < st.get("pairs", PAIR_QUESTIONS) else None
            for qq in (q, second):
                if qq is None or i >= n:
                    continue
                pix[i] = np.asarray(view)
                for b, vb, vis in vboxes:
                    if vis == "in" and min(vb[2] - vb[0], vb[3] - vb[1]) >= READABLE_MIN:
                        box_rows.append((i, b.digit, _patch_mask(vb, size)))
                digits.append(d)
                colors.append(c)
                for key, val in zip(("families", "questions", "answers", "sizes"), qq[:4]):
                    out[key].append(val)
                attn_t.append(_patch_mask(qq[4], size))
                out["described"].append(_describe(vboxes))
                out["caption"].append(_describe(vboxes, readable_only=True))
                i += 1
    out["pixels"] = pix
    out["digit_labels"] = np.stack(digits)
    out["color_labels"] = np.stack(colors)
    out["attn_targets"] = np.stack(attn_t)
    # readable boxes: (view index, digit, patch mask) for a box-pooled digit loss
    out["box_view"] = np.array([r[0] for r in box_rows], dtype=np.int64)
    out["box_digit"] = np.array([r[1] for r in box_rows], dtype=np.int64)
    out["box_mask"] = np.stack([r[2] for r in box_rows]) if box_rows else np.zeros((0, grid * grid), np.float32)
    return out
