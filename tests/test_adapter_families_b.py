"""Qwen-VL, InternVL, composite and InstructBLIP adapters on tiny random models.

Per family: (a) the probe equals eager `output_attentions`; (b) the layout places visual tokens over
the image regions they see; (c) every preset runs and a batch equals one-by-one answers; (d) a saved
checkpoint loads through `create_adapter(path)`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adapter_checks import eager_language_model, eager_rows, language_input_embeddings
from conftest import random_image
from laser.adapters import VisionLanguageAdapter, create_adapter
from PIL import Image
from tiny_models import TINY_BUILDERS, TINY_VARIANTS

import laser.method.attention
from laser import LaserConfig, LaserEngine, list_presets
from laser.method.attention import (
    capture_attention,
    capture_full,
    forward_last_position,
    model_tensors,
    pad_positions,
)
from laser.method.decoding import cache_kwarg, output_cache
from laser.method.probe import AttentionProbe

FAMILIES = [
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "composite", "composite_open_clip", "instructblip",
]
# (width, height) of the tall, wide and square test images, per family scale
SIZES = {"small": [(48, 96), (100, 52), (64, 64)]}
QUESTIONS = ["What is the color ?", "Is there a red box in the image ?", "How many"]
_CACHE: dict[tuple[str, int], object] = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adapter_for(family: str, vision_layers: int | None = None):
    key = (family, vision_layers)
    if key not in _CACHE:
        kwargs = {} if vision_layers is None else {"vision_layers": vision_layers}
        name, builder = TINY_VARIANTS.get(family, (family, TINY_BUILDERS.get(family)))
        model, processor = builder(**kwargs)
        _CACHE[key] = create_adapter(name, model=model, processor=processor)
    return _CACHE[key]


def projects_rows(adapter) -> bool:
    cls = type(adapter)
    return (
        cls.probe_positions is not VisionLanguageAdapter.probe_positions
        or cls.project_rows is not VisionLanguageAdapter.project_rows
    )


def padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(len(tensors), max(t.numel() for t in tensors), dtype=torch.long)
    for i, t in enumerate(tensors):
        out[i, : t.numel()] = t
    return out


def capture_projected(adapter, probe, inputs, project: bool = True):
    """The engine change this module's adapters need (`laser.method.attention.capture_full` reading
    `probe_positions` and calling `project_rows`): ([batch, L, H, n_max], valid, layouts)."""
    n = len(inputs["input_ids"])
    layouts = [adapter.visual_layout(inputs, i) for i in range(n)]
    positions = padded([adapter.probe_positions(inputs, i) for i in range(n)])
    model_inputs = adapter.prepare_model_inputs(model_tensors(inputs))
    with probe.capture(positions, model_inputs["attention_mask"]) as capture:
        forward_last_position(adapter, model_inputs, use_cache=False)
    rows = capture.result()
    if project:
        rows = adapter.project_rows(rows, inputs, layouts)
    _, valid = pad_positions(layouts)
    return rows, valid, layouts


@pytest.fixture
def engine_projection(monkeypatch):
    """Until the engine honours `probe_positions` / `project_rows`, patch `capture_full` with them."""
    import inspect

    if "project_rows" not in inspect.getsource(laser.method.attention):
        monkeypatch.setattr(laser.method.attention, "capture_full", capture_projected)


def images_for(family: str, seed: int = 0) -> list[Image.Image]:
    return [random_image(w, h, seed=seed + i) for i, (w, h) in enumerate(SIZES["small"])]


# ----------------------------------------------------------------- (a) probe == eager
@pytest.mark.parametrize("family", FAMILIES)
def test_probe_equals_eager(family):
    adapter = adapter_for(family)
    if projects_rows(adapter):
        pytest.skip("rows over probe positions: see test_probe_and_projection_equal_eager_chain")
    images = images_for(family)
    for with_question in (True, False):
        inputs = adapter.build_inputs(images, QUESTIONS, with_question=with_question)
        probe = AttentionProbe(adapter.attention_modules()).install()
        try:
            with torch.no_grad():
                rows, valid, _ = capture_full(adapter, probe, inputs)
        finally:
            probe.remove()
        expected = eager_rows(adapter, inputs)
        mask = valid[:, None, None, :]
        torch.testing.assert_close(rows * mask, expected * mask, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f == "instructblip"])
def test_probe_and_projection_equal_eager_chain(family):
    """Q-Former families: probe rows over the query tokens equal eager LM attentions, and
    `project_rows` equals chaining them with eager Q-Former cross-attentions (mean of layers, heads)."""
    adapter = adapter_for(family)
    inputs = adapter.build_inputs([im for im in images_for(family)], QUESTIONS)
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            rows, _, _ = capture_projected(adapter, probe, inputs, project=False)
            projected = adapter.project_rows(rows, inputs, None)
    finally:
        probe.remove()
    blip = adapter.model.blip
    qformer_config = blip.qformer.config
    saved = qformer_config._attn_implementation
    qformer_config._attn_implementation = "eager"
    try:
        model_inputs = adapter.prepare_model_inputs(model_tensors(inputs))
        with torch.no_grad(), eager_language_model(adapter):
            out = blip(**model_inputs, output_attentions=True)
            features = blip.get_image_features(
                model_inputs["pixel_values"], qformer_input_ids=model_inputs["qformer_input_ids"],
                qformer_attention_mask=model_inputs["qformer_attention_mask"], output_attentions=True,
            )
    finally:
        qformer_config._attn_implementation = saved
    att = torch.stack([a[:, :, -1, :] for a in out.language_model_outputs.attentions], dim=1)
    positions = padded([adapter.probe_positions(inputs, i) for i in range(len(QUESTIONS))])
    expected = att.gather(-1, positions[:, None, None, :].expand(-1, att.shape[1], att.shape[2], -1))
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=0)
    cross = torch.stack(features.qformer_outputs.cross_attentions).mean(dim=(0, 2))  # [B, Q, 1 + P]
    chained = expected @ cross[:, None, :, 1:]
    torch.testing.assert_close(projected, chained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.usefixtures("engine_projection")
def test_prefix_reuse_equals_full_prefill(family):
    adapter = adapter_for(family)
    images = images_for(family, seed=3)
    inputs_q = adapter.build_inputs(images, QUESTIONS)
    inputs_0 = adapter.build_inputs(images, QUESTIONS, with_question=False)
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            reused = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=True)
            full = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=False)
    finally:
        probe.remove()
    assert reused.prefix_reused != adapter.question_dependent_visual_tokens
    torch.testing.assert_close(reused.a_zero, full.a_zero, atol=1e-5, rtol=0)
    torch.testing.assert_close(reused.a_plus, full.a_plus, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_continuation_equals_full_forward(family):
    """Two decoding steps on the KV cache (positions from `adapter.position_ids`) give the logits of
    a full forward over the extended, left-padded prompts."""
    adapter = adapter_for(family)
    inputs = model_tensors(adapter.build_inputs(images_for(family), QUESTIONS))
    words = [["red", "box"], ["yes", "no"], ["blue", "digit"]]
    extra = torch.tensor([adapter.tokenizer.convert_tokens_to_ids(w) for w in words])
    with torch.no_grad():
        model_inputs = adapter.prepare_model_inputs(inputs)
        position_ids = adapter.position_ids(model_inputs["attention_mask"])
        if position_ids is not None:
            model_inputs["position_ids"] = position_ids
        out = adapter.model(**model_inputs, use_cache=True)
        cache, mask = output_cache(out), model_inputs["attention_mask"]
        for step in range(extra.shape[1]):
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            step_inputs = {"input_ids": extra[:, step : step + 1], "attention_mask": mask}
            step_inputs[cache_kwarg(adapter.model)] = cache
            position_ids = adapter.position_ids(mask, mask.shape[1] - 1)
            if position_ids is not None:
                step_inputs["position_ids"] = position_ids
            out = adapter.model(**step_inputs, use_cache=True)
            cache = output_cache(out)
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        full["attention_mask"] = mask
        full = adapter.prepare_model_inputs(full)
        position_ids = adapter.position_ids(full["attention_mask"])
        if position_ids is not None:
            full["position_ids"] = position_ids
        ref = adapter.model(**full, use_cache=False).logits[:, -1]
    torch.testing.assert_close(out.logits[:, -1], ref, atol=1e-4, rtol=0)


# ----------------------------------------------------------------- (b) locality
def _cell_boxes(segment):
    rows, cols = segment.grid
    x0, y0, x1, y1 = segment.box
    dx, dy = (x1 - x0) / cols, (y1 - y0) / rows
    return rows, cols, lambda r, c: (x0 + c * dx, y0 + r * dy, x0 + (c + 1) * dx, y0 + (r + 1) * dy)


def visual_features(adapter, inputs, layouts) -> list[torch.Tensor]:
    """Per sample, the features of its layout's cells: [n_visual, dim]. LM input embeddings at the
    layout positions; for Q-Former families (whose LM tokens mix the whole image) the patch
    features the Q-Former cross-attends to."""
    if type(adapter).__name__ == "InstructBlipAdapter":
        with torch.no_grad():
            pixel_values = adapter.prepare_model_inputs(model_tensors(inputs))["pixel_values"]
            patches = adapter.model.blip.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]
        return list(patches)
    hidden = language_input_embeddings(adapter, inputs)
    return [hidden[i, layout.positions] for i, layout in enumerate(layouts)]


def check_locality(adapter, size: tuple[int, int], region=(0.55, 0.2, 0.8, 0.45)) -> None:
    """Repaint `region` (normalised) of an image: exactly the tokens over it change (one cell margin)."""
    w, h = size
    base = random_image(w, h, seed=11)
    changed = np.asarray(base).copy()
    px = (int(region[0] * w), int(region[1] * h), int(region[2] * w), int(region[3] * h))
    changed[px[1] : px[3], px[0] : px[2]] = 255 - changed[px[1] : px[3], px[0] : px[2]]
    inputs = adapter.build_inputs([base, Image.fromarray(changed)], ["What ?", "What ?"])
    layouts = [adapter.visual_layout(inputs, i) for i in range(2)]
    a, b = visual_features(adapter, inputs, layouts)
    diff = (a - b).abs().amax(-1) > 1e-5
    rx0, ry0, rx1, ry1 = px[0] / w, px[1] / h, px[2] / w, px[3] / h
    start = 0
    for segment in layouts[0].segments:
        rows, cols, cell = _cell_boxes(segment)
        grid = diff[start : start + rows * cols].reshape(rows, cols)
        start += rows * cols
        inside = torch.zeros(rows, cols, dtype=torch.bool)  # cells entirely inside the region
        near = torch.zeros(rows, cols, dtype=torch.bool)  # cells within one cell of it
        for r in range(rows):
            for c in range(cols):
                x0, y0, x1, y1 = cell(r, c)
                inside[r, c] = x0 >= rx0 and x1 <= rx1 and y0 >= ry0 and y1 <= ry1
                mx, my = x1 - x0, y1 - y0
                near[r, c] = x1 + mx > rx0 and x0 - mx < rx1 and y1 + my > ry0 and y0 - my < ry1
        sx0, sy0, sx1, sy1 = segment.box
        if sx0 < rx1 and rx0 < sx1 and sy0 < ry1 and ry0 < sy1:
            assert grid.any(), f"{size}: no visual token of a segment over the region changed"
        assert not (grid & ~near).any(), f"{size}: tokens away from the region changed:\n{grid.int()}"
        assert grid[inside].all(), f"{size}: tokens inside the region did not change:\n{grid.int()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_locality(family):
    adapter = adapter_for(family, vision_layers=0)
    for size in SIZES["small"]:
        check_locality(adapter, size)


# ----------------------------------------------------------------- (c) presets, batch == singles
def _engine(adapter, preset: str) -> LaserEngine:
    overrides = {"decode.max_new_tokens": 3, "crop.min_side": 16, "vaq.top_heads": 2}
    if preset == "vicrop":
        overrides["crop.scales"] = "[0.1,0.15]"
    return LaserEngine(adapter, LaserConfig.preset(preset, **overrides))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.usefixtures("engine_projection")
def test_presets_batch_equals_single(family):
    adapter = adapter_for(family)
    images = images_for(family, seed=5)
    for preset in list_presets():
        if LaserConfig.preset(preset).crop.input == "both" and not adapter.supports_multi_image:
            continue
        engine = _engine(adapter, preset)
        try:
            batch = engine.answer_batch(images, QUESTIONS)
            singles = [engine.answer(im, q) for im, q in zip(images, QUESTIONS)]
        finally:
            engine.probe.remove()
        for b, s in zip(batch, singles):
            assert b.token_ids == s.token_ids, preset
            assert (b.layer, b.box, b.path) == (s.layer, s.box, s.path), preset
            if b.vaq is not None:
                np.testing.assert_allclose(b.vaq, s.vaq, atol=1e-5)


# ----------------------------------------------------------------- (d) loading from a folder
@pytest.mark.parametrize("family", FAMILIES)
def test_create_adapter_from_folder(family, tmp_path):
    adapter = adapter_for(family)
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    loaded = create_adapter(tmp_path)
    assert type(loaded) is type(adapter)
    images = images_for(family)[:1]
    inputs = adapter.build_inputs(images, QUESTIONS[:1])
    inputs_loaded = loaded.build_inputs(images, QUESTIONS[:1])
    torch.testing.assert_close(inputs_loaded["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        ref = adapter.model(**adapter.prepare_model_inputs(_tensors(inputs))).logits
        out = loaded.model(**loaded.prepare_model_inputs(_tensors(inputs_loaded))).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def _tensors(inputs):
    return {k: v for k, v in inputs.items() if not k.startswith("laser_")}
