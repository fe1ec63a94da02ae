"""LLaVA-NeXT, LLaVA-OneVision, Idefics3, SmolVLM, Gemma 3 and PaliGemma adapters on tiny random models:
probe == eager attention, layout locality, every preset end to end, batching, loading from a folder."""

from __future__ import annotations

import pytest
import torch
from adapter_checks import eager_rows, language_input_embeddings
from conftest import random_image
from laser.adapters import create_adapter
from PIL import Image
from tiny_families_a import BUILDERS_A

from laser import LaserConfig, LaserEngine, list_presets
from laser.method.attention import capture_full
from laser.method.probe import AttentionProbe

FAMILIES = list(BUILDERS_A)
QUESTIONS = ["What is the color ?", "Is there a red box ?", "How many"]
# (width, height): wide, tall, square; the anyres / tiling families make several tiles of each
SIZES = [(70, 40), (30, 90), (56, 56)]
FAST = {"decode.max_new_tokens": 3, "crop.min_side": 16}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    name = request.param
    if name == "smolvlm":
        pytest.importorskip("num2words", reason="the SmolVLM processor needs num2words")
    model, processor = BUILDERS_A[name]()
    return name, create_adapter(name, model=model, processor=processor)


def images_for(sizes, seed=0):
    return [random_image(w, h, seed + i) for i, (w, h) in enumerate(sizes)]


# ----------------------------------------------------------------------------- (a) probe == eager
def test_probe_equals_eager_every_layer_and_head(family):
    _, adapter = family
    inputs = adapter.build_inputs(images_for(SIZES), QUESTIONS)
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            rows, valid, layouts = capture_full(adapter, probe, inputs)
    finally:
        probe.remove()
    reference = eager_rows(adapter, inputs)
    assert rows.shape == reference.shape
    assert rows.shape[1:3] == (adapter.num_layers, adapter.num_heads)
    for i, layout in enumerate(layouts):
        assert int(valid[i].sum()) == layout.n_visual
    torch.testing.assert_close(rows * valid[:, None, None], reference * valid[:, None, None], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- (b) locality
def cell_boxes(segment):
    """Normalised box of every cell of a segment, row-major, clipped to the image: [(x0, y0, x1, y1)]."""
    rows, cols = segment.grid
    x0, y0, x1, y1 = segment.box
    dx, dy = (x1 - x0) / cols, (y1 - y0) / rows
    out = []
    for r in range(rows):
        for c in range(cols):
            box = (x0 + c * dx, y0 + r * dy, x0 + (c + 1) * dx, y0 + (r + 1) * dy)
            out.append((max(box[0], 0), max(box[1], 0), min(box[2], 1), min(box[3], 1), dx, dy))
    return out


def overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def repaint(image: Image.Image, region, seed: int) -> Image.Image:
    w, h = image.size
    box = (round(region[0] * w), round(region[1] * h), round(region[2] * w), round(region[3] * h))
    patch = random_image(box[2] - box[0], box[3] - box[1], seed)
    out = image.copy()
    out.paste(patch, box[:2])
    return out


@pytest.fixture(scope="module")
def local_adapter(family):
    name, _ = family
    model, processor = BUILDERS_A[name](vision_layers=0)
    return create_adapter(name, model=model, processor=processor)


@pytest.mark.parametrize("size", SIZES, ids=["wide", "tall", "square"])
def test_layout_locality(local_adapter, size):
    """Repaint one region: exactly the visual tokens the layout places over it change (one cell of
    margin for resampling), and no token outside the layout changes."""
    adapter = local_adapter
    region = (0.6, 0.55, 0.9, 0.8)
    image = random_image(*size, seed=3)
    edited = repaint(image, region, seed=4)
    inputs = [adapter.build_inputs([im], ["What is the color ?"]) for im in (image, edited)]
    assert torch.equal(inputs[0]["input_ids"], inputs[1]["input_ids"])
    layout = adapter.visual_layout(inputs[0], 0)
    before, after = (language_input_embeddings(adapter, x)[0] for x in inputs)
    changed = (after - before).abs().amax(-1) > 1e-6  # [seq]
    outside = torch.ones_like(changed)
    outside[layout.positions] = False
    assert not changed[outside].any(), f"tokens outside the layout changed: {outside.nonzero().flatten().tolist()}"
    seen_change = seen_still = 0
    for segment in layout.segments:
        for position, (*cell, dx, dy) in zip(segment.positions.tolist(), cell_boxes(segment)):
            if cell[2] <= cell[0] or cell[3] <= cell[1]:
                continue  # a cell over the processor's padding
            grown = (region[0] - dx, region[1] - dy, region[2] + dx, region[3] + dy)
            area = (cell[2] - cell[0]) * (cell[3] - cell[1])
            if overlap(cell, region) > 0.25 * area:
                assert changed[position], f"{segment.grid} cell {cell} over the region did not change"
                seen_change += 1
            elif overlap(cell, grown) == 0:
                assert not changed[position], f"{segment.grid} cell {cell} away from the region changed"
                seen_still += 1
    assert seen_change and seen_still


# ----------------------------------------------------------------------------- (c) presets, batches
@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_runs(family, preset):
    _, adapter = family
    engine = LaserEngine(adapter, LaserConfig.preset(preset, **FAST))
    pred = engine.answer(random_image(70, 40, 5), "What is the color ?")
    assert isinstance(pred.answer, str)
    assert pred.path in ("vanilla", "direct", "contrastive")
    if engine.config.localize:
        assert 0 <= pred.layer < adapter.num_layers and len(pred.vaq) == adapter.num_layers


def test_answer_batch_equals_one_by_one(family):
    _, adapter = family
    engine = LaserEngine(adapter, LaserConfig.preset("laser_full", **FAST))
    images = images_for(SIZES, seed=10)
    batch = engine.answer_batch(images, QUESTIONS)
    for pred, image, question in zip(batch, images, QUESTIONS):
        single = engine.answer(image, question)
        assert (pred.token_ids, pred.layer, pred.box, pred.path) == (
            single.token_ids, single.layer, single.box, single.path
        )
        torch.testing.assert_close(torch.tensor(pred.vaq), torch.tensor(single.vaq), atol=1e-4, rtol=1e-3)


def test_multi_image_prompt_layout(family):
    _, adapter = family
    images = [random_image(70, 40, 1), random_image(30, 60, 2)]
    inputs = adapter.build_inputs([images, images[0]], ["What is the color ?", "How many"])
    two, one = adapter.visual_layout(inputs, 0), adapter.visual_layout(inputs, 1)
    assert {s.image_index for s in two.segments} == {0, 1} and {s.image_index for s in one.segments} == {0}
    ids = inputs["input_ids"]
    for i, layout in enumerate((two, one)):
        assert (ids[i, layout.positions] == adapter.image_token_id).all()
        assert layout.positions.unique().numel() == layout.n_visual


# ----------------------------------------------------------------------------- (d) loading
def test_create_adapter_from_saved_folder(family, tmp_path):
    name, adapter = family
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    loaded = create_adapter(tmp_path)
    assert type(loaded) is type(adapter) and loaded.name == name
    image = random_image(70, 40, 7)
    a = adapter.build_inputs([image], ["What is the color ?"])
    b = loaded.build_inputs([image], ["What is the color ?"])
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        rows_a = capture_full(adapter, AttentionProbe(adapter.attention_modules()).install(), a)[0]
        rows_b = capture_full(loaded, AttentionProbe(loaded.attention_modules()).install(), b)[0]
    torch.testing.assert_close(rows_a, rows_b, atol=1e-5, rtol=0)
