"""Sanity checks of the testbed scenes and the shipped split (a few seconds)."""

import random

import numpy as np
import pytest

from laser.paths import assets_dir
from laser.testbed.glyphs import glyph_box
from laser.testbed.scenes import (
    COLORS,
    MEDIUM_MAX,
    RELATIONS,
    SMALL_MAX,
    make_questions,
    make_scene,
    related_box,
    render_scene,
    size_bucket,
)
from laser.testbed.split import load_split, split_records

SPLIT = assets_dir() / "testbed" / "eval.jsonl"


def test_scene_is_deterministic():
    a, b = make_scene(123), make_scene(123)
    assert a == b
    assert np.array_equal(np.asarray(render_scene(a)), np.asarray(render_scene(b)))
    assert make_questions(a, random.Random(5)) == make_questions(b, random.Random(5))
    assert make_scene(124) != a


def test_scene_layout_and_colours():
    for seed in range(50):
        s = make_scene(seed)
        assert 3 <= len(s.boxes) <= 6
        assert len({b.color for b in s.boxes}) == len(s.boxes)
        for i, p in enumerate(s.boxes):
            assert 0 <= p.x0 < p.x1 <= s.size and 0 <= p.y0 < p.y1 <= s.size
            for q in s.boxes[i + 1 :]:
                assert p.x1 <= q.x0 or q.x1 <= p.x0 or p.y1 <= q.y0 or q.y1 <= p.y0


def test_box_is_drawn_in_its_colour_with_a_dark_glyph():
    s = make_scene(7)
    arr = np.asarray(render_scene(s)).astype(int)
    for b in s.boxes:
        patch = arr[b.y0 + 3 : b.y1 - 3, b.x0 + 3 : b.x1 - 3].reshape(-1, 3)
        share = (np.abs(patch - np.array(COLORS[b.color])).sum(1) < 10).mean()
        assert share > 0.3, (b, share)
        gx0, gy0, gx1, gy1 = map(int, glyph_box(b.xyxy))
        assert (arr[gy0:gy1, gx0:gx1].sum(-1) < 60).mean() > 0.2


@pytest.mark.parametrize("side,bucket", [(40, "small"), (47, "small"), (48, "medium"), (95, "medium"), (96, "large")])
def test_size_bucket_thresholds(side, bucket):
    assert size_bucket([10, 10, 10 + side, 10 + side], 512, 64) == bucket
    assert SMALL_MAX == 6 and MEDIUM_MAX == 12


def _check_answer(scene, rec):
    m, q, ans = rec["meta"], rec["question"], rec["answers"][0]
    assert m["size"] == size_bucket(m["target_box"], scene.size)
    if m["family"] == "existence":
        color = q.split(" ")[3]
        present = scene.by_color(color) is not None
        assert ans == ("yes" if present else "no")
        if present:
            assert m["target_box"] == scene.by_color(color).xyxy
    elif m["family"] == "reading":
        color = q.split(" ")[5]
        box = scene.by_color(color)
        assert ans == str(box.digit) and m["target_box"] == box.xyxy
    else:
        anchor = next(b for b in scene.boxes if b.xyxy == m["anchor_box"])
        assert f"{RELATIONS[m['relation']]} the {anchor.color} box?" in q
        t = related_box(scene, anchor, m["relation"])
        assert ans == str(t.digit) and m["target_box"] == t.xyxy


def test_split_regenerates_and_answers_match():
    shipped = load_split(SPLIT)
    assert len(shipped) >= 600
    regen = [r for _, _, recs in split_records(40) for r in recs]
    assert regen == shipped[: len(regen)]
    scenes = {}
    for scene, _, _ in split_records(40):
        scenes[scene.seed] = scene
    for r in regen:
        _check_answer(scenes[r["meta"]["scene_seed"]], r)


def test_shipped_split_covers_families_and_sizes():
    shipped = load_split(SPLIT)
    combos = {(r["meta"]["family"], r["meta"]["size"]) for r in shipped}
    for fam in ("reading", "relational"):
        for size in ("small", "medium", "large"):
            assert (fam, size) in combos
    assert all((SPLIT.parent / r["image"]).exists() for r in shipped[:50])
    assert len({r["sample_id"] for r in shipped}) == len(shipped)
