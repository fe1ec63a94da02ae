"""Every registered adapter on a tiny random-weight model of its real class.

The families come from the registry, `list_adapters()`, the way timm's tests run over `list_models()`:
a registered adapter without a tiny builder in `tests/tiny_models.py` (`TINY_BUILDERS`) fails here.
`TINY_VARIANTS` adds second fixtures of a family (the composite adapter on an open_clip tower).

Per family: (a) the probe equals eager `output_attentions` (Q-Former families: the product's capture,
probe rows over the query tokens projected through the Q-Former, equals the eager chain); (b) the layout
places each visual token over the image region it sees; (c) prefix reuse equals full prefills, a KV-cache
continuation equals a full forward, every preset runs and a batch equals one-by-one answers, multi-image
prompts lay out both images; (d) a saved checkpoint loads through `create_adapter(path)`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adapter_checks import cell_boxes, eager_language_model, eager_rows, language_input_embeddings
from conftest import random_image
from laser.adapters import VisionLanguageAdapter, create_adapter, get_adapter_class, list_adapters
from PIL import Image
from tiny_models import TINY_BUILDERS, TINY_VARIANTS
from transformers import BatchFeature

from laser import LaserConfig, LaserEngine, list_presets
from laser.compat import output_cache
from laser.method.attention import capture_attention, capture_full, model_tensors
from laser.method.probe import AttentionProbe
from laser.method.views import fill_cells, take_samples

FAMILIES = list_adapters() + sorted(TINY_VARIANTS)
# (width, height) of the tall, wide and square test images
SIZES = [(48, 96), (100, 52), (64, 64)]
QUESTIONS = ["What is the color ?", "Is there a red box in the image ?", "How many"]
_CACHE: dict[tuple[str, int | None], VisionLanguageAdapter] = {}


def adapter_name(family: str) -> str:
    return TINY_VARIANTS[family][0] if family in TINY_VARIANTS else family


def adapter_for(family: str, vision_layers: int | None = None) -> VisionLanguageAdapter:
    """The family's tiny adapter (cached); `vision_layers=0`: the vision tower cut to its local part."""
    key = (family, vision_layers)
    if key not in _CACHE:
        name, builder = TINY_VARIANTS.get(family, (family, TINY_BUILDERS.get(family)))
        if builder is None:
            pytest.fail(f"registered adapter {family!r} has no tiny builder in tests/tiny_models.py TINY_BUILDERS")
        if name == "smolvlm":
            pytest.importorskip("num2words", reason="the SmolVLM processor needs num2words")
        model, processor = builder(**({} if vision_layers is None else {"vision_layers": vision_layers}))
        _CACHE[key] = create_adapter(name, model=model, processor=processor)
    return _CACHE[key]


def projects_rows(family: str) -> bool:
    """True for adapters whose probe reads other positions than the visual tokens (Q-Formers)."""
    cls = get_adapter_class(adapter_name(family))
    return (
        cls.probe_positions is not VisionLanguageAdapter.probe_positions
        or cls.project_rows is not VisionLanguageAdapter.project_rows
    )


def sample_images(seed: int = 0) -> list[Image.Image]:
    """The tall, wide and square test images."""
    return [random_image(w, h, seed=seed + i) for i, (w, h) in enumerate(SIZES)]


def test_every_registered_adapter_has_a_tiny_builder():
    missing = [name for name in list_adapters() if name not in TINY_BUILDERS]
    assert not missing, f"registered adapters without a tiny builder in tests/tiny_models.py: {missing}"


# ----------------------------------------------------------------- (a) probe == eager
@pytest.mark.parametrize("family", [f for f in FAMILIES if not projects_rows(f)])
def test_probe_equals_eager(family):
    adapter = adapter_for(family)
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        for with_question in (True, False):
            inputs = adapter.build_inputs(sample_images(), QUESTIONS, with_question=with_question)
            with torch.no_grad():
                rows, valid, layouts = capture_full(adapter, probe, inputs)
            expected = eager_rows(adapter, inputs)
            assert rows.shape == expected.shape and rows.shape[1:3] == (adapter.num_layers, adapter.num_heads)
            assert [int(v.sum()) for v in valid] == [layout.n_visual for layout in layouts]
            mask = valid[:, None, None, :]
            torch.testing.assert_close(rows * mask, expected * mask, atol=1e-5, rtol=0)
    finally:
        probe.remove()


@pytest.mark.parametrize("family", [f for f in FAMILIES if projects_rows(f)])
def test_qformer_capture_equals_eager_chain(family):
    """The product's capture (`capture_full`: probe rows over the query tokens, then `project_rows`)
    equals eager LM attentions over the query tokens chained with the eager Q-Former cross-attentions
    (the adapter's cross-attention layer, or the mean of all if it names none; mean over heads) onto the patches."""
    adapter = adapter_for(family)
    inputs = adapter.build_inputs(sample_images(), QUESTIONS)
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            projected, valid, _ = capture_full(adapter, probe, inputs)
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
    attentions = torch.stack([a[:, :, -1, :] for a in out.language_model_outputs.attentions], dim=1)
    query_rows = torch.stack(
        [attentions[i][..., adapter.probe_positions(inputs, i)] for i in range(len(QUESTIONS))]
    )  # [B, L, H, Q]
    every_layer = torch.stack(features.qformer_outputs.cross_attentions)  # [layers, B, heads, Q, 1 + P]
    index = adapter.cross_layer_index(blip)
    cross = (every_layer.mean(dim=0) if index is None else every_layer[index]).mean(dim=1)  # [B, Q, 1 + P]
    chained = query_rows @ cross[:, None, :, 1:]  # [B, L, H, P]
    assert valid.all() and projected.shape == chained.shape
    torch.testing.assert_close(projected, chained, atol=1e-5, rtol=0)


# ----------------------------------------------------------------- (b) locality
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
    outside = torch.ones(hidden.shape[:2], dtype=torch.bool)
    for i, layout in enumerate(layouts):
        outside[i, layout.positions] = False
    assert torch.equal(outside[0], outside[1]), "the two prompts place their visual tokens differently"
    assert torch.allclose(hidden[0][outside[0]], hidden[1][outside[1]]), "a token outside the layout changed"
    return [hidden[i, layout.positions] for i, layout in enumerate(layouts)]


def check_locality(adapter, size: tuple[int, int], region=(0.55, 0.2, 0.8, 0.45)) -> None:
    """Invert `region` (normalised) of an image: every cell inside it changes, no cell more than one
    cell away from it changes, and nothing outside the layout changes."""
    w, h = size
    base = random_image(w, h, seed=11)
    changed = np.asarray(base).copy()
    px = (int(region[0] * w), int(region[1] * h), int(region[2] * w), int(region[3] * h))
    changed[px[1] : px[3], px[0] : px[2]] = 255 - changed[px[1] : px[3], px[0] : px[2]]
    inputs = adapter.build_inputs([base, Image.fromarray(changed)], ["What ?", "What ?"])
    layouts = [adapter.visual_layout(inputs, i) for i in range(2)]
    a, b = visual_features(adapter, inputs, layouts)
    differs = (a - b).abs().amax(-1) > 1e-5
    rx0, ry0, rx1, ry1 = px[0] / w, px[1] / h, px[2] / w, px[3] / h
    start = 0
    for segment in layouts[0].segments:
        cells = cell_boxes(segment)
        grid = differs[start : start + len(cells)]
        start += len(cells)
        inside = torch.tensor([x0 >= rx0 and x1 <= rx1 and y0 >= ry0 and y1 <= ry1 for x0, y0, x1, y1 in cells])
        near = torch.tensor(  # within one cell of the region
            [x1 + (x1 - x0) > rx0 and x0 - (x1 - x0) < rx1 and y1 + (y1 - y0) > ry0 and y0 - (y1 - y0) < ry1
             for x0, y0, x1, y1 in cells]
        )
        sx0, sy0, sx1, sy1 = segment.box
        if sx0 < rx1 and rx0 < sx1 and sy0 < ry1 and ry0 < sy1:
            assert grid.any(), f"{size}: no visual token of a segment over the region changed"
        shape = segment.grid
        assert not (grid & ~near).any(), f"{size}: tokens away from the region changed:\n{grid.view(shape).int()}"
        assert grid[inside].all(), f"{size}: tokens inside the region did not change:\n{grid.view(shape).int()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_locality(family):
    adapter = adapter_for(family, vision_layers=0)
    for size in SIZES:
        check_locality(adapter, size)


def check_masked_cells(adapter, size: tuple[int, int]) -> None:
    """LASER's masked view on the processed pixels (`pixel_views`, `fill_cells`): fill the middle cell of
    one segment of an image (one sample per segment): that cell's visual token changes and no other token
    of its segment; other views of the image (a base view, a thumbnail) change over the cell's region
    only (within one of their cells of it); nothing else changes."""
    image = random_image(*size, seed=12)
    n = len(adapter.visual_layout(adapter.build_inputs([image], ["What ?"]), 0).segments)
    inputs = adapter.build_inputs([image] * (n + 1), ["What ?"] * (n + 1))
    masked = BatchFeature({**inputs, **{key: inputs[key].clone() for key in adapter.pixel_rows(inputs)}})
    layouts = [adapter.visual_layout(inputs, i) for i in range(n + 1)]
    cells = []
    for k, segment in enumerate(layouts[0].segments):
        rows, cols = segment.grid
        cell = (rows // 2) * cols + cols // 2
        cells.append((cell, cell_boxes(segment)[cell]))
        views = adapter.pixel_views(masked, k + 1)
        fill_cells(views, [(segment.image_index, cells[-1][1])], "noise", adapter.pixel_transform(), torch.Generator())
    for key, rows in adapter.pixel_rows(inputs).items():
        assert torch.equal(masked[key][: rows[0]], inputs[key][: rows[0]]), "an unmasked sample's pixels changed"
    features = visual_features(adapter, masked, layouts)
    for k, (segment, (cell, (bx0, by0, bx1, by1))) in enumerate(zip(layouts[0].segments, cells)):
        differs = (features[k + 1] - features[0]).abs().amax(-1) > 1e-5
        start = 0
        for j, other in enumerate(layouts[0].segments):
            boxes = cell_boxes(other)
            grid = differs[start : start + len(boxes)]
            start += len(boxes)
            if j == k:
                expected = torch.zeros(len(boxes), dtype=torch.bool)
                expected[cell] = True
                assert torch.equal(grid, expected), f"{size} segment {k}: changed tokens\n{grid.view(other.grid).int()}"
            elif other.image_index != segment.image_index:
                assert not grid.any(), f"{size}: masking image {segment.image_index} changed image {other.image_index}"
            else:
                near = torch.tensor(
                    [x1 + (x1 - x0) > bx0 and x0 - (x1 - x0) < bx1 and y1 + (y1 - y0) > by0 and y0 - (y1 - y0) < by1
                     for x0, y0, x1, y1 in boxes]
                )
                assert not (grid & ~near).any(), f"{size} segment {k} -> {j}: tokens away from the cell changed"
                sx0, sy0, sx1, sy1 = other.box
                if sx0 < bx1 and bx0 < sx1 and sy0 < by1 and by0 < sy1:
                    assert grid.any(), f"{size} segment {k} -> {j}: a view over the cell did not change"


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_cell_changes_only_its_token(family):
    adapter = adapter_for(family, vision_layers=0)
    for size in SIZES[:2]:
        check_masked_cells(adapter, size)


# ----------------------------------------------------------------- (c) passes, decoding, presets
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reuse_equals_full_prefill(family):
    adapter = adapter_for(family)
    images = sample_images(seed=3)
    inputs_q = adapter.build_inputs(images, QUESTIONS)
    inputs_0 = adapter.build_inputs(images, QUESTIONS, with_question=False)
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            reused = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=True)
            full = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=False)
    finally:
        probe.remove()
    assert reused.prefix_reused == adapter.supports_prefix_reuse
    torch.testing.assert_close(reused.a_zero, full.a_zero, atol=1e-5, rtol=0)
    torch.testing.assert_close(reused.a_plus, full.a_plus, atol=1e-5, rtol=0)


def assert_same_inputs(got, expected, what: str) -> None:
    assert got.keys() == expected.keys(), what
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{what}: {key}"
        else:
            assert got[key] == value, f"{what}: {key}"


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_prompts_in_one_build_split_into_the_separate_builds(family):
    """VAQ's a+ prompts and baseline prompts (no question: None; or a generic prompt) of the same images
    in ONE `build_inputs` call, cut apart with `take_samples` by the adapter's `sample_rows`, equal the two
    separate calls exactly: the shorter prompts' extra padding columns are trimmed (left padding of the LM
    prompt, right padding of a Q-Former's text), per-image and pixel rows follow their samples."""
    adapter = adapter_for(family)
    images = sample_images(seed=5)
    if adapter.supports_multi_image:  # per-image rows of a sample with two images
        images[0] = [images[0], random_image(40, 30, seed=9)]
    n, generic = len(images), ["Write a general description of the image."] * len(images)
    with_question = adapter.build_inputs(images, QUESTIONS)
    for baseline, expected in (
        ([None] * n, adapter.build_inputs(images, QUESTIONS, with_question=False)),
        (generic, adapter.build_inputs(images, generic)),
    ):
        both = adapter.build_inputs(images + images, QUESTIONS + baseline)
        rows = adapter.sample_rows(both)
        assert_same_inputs(take_samples(both, rows, range(n)), with_question, f"a+ rows, baseline {baseline[0]}")
        assert_same_inputs(take_samples(both, rows, range(n, 2 * n)), expected, f"a0 rows, baseline {baseline[0]}")


def test_sample_rows_names_an_input_it_cannot_assign():
    adapter = adapter_for("llava")
    inputs = adapter.build_inputs(sample_images(), QUESTIONS)
    inputs["extra_rows"] = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="'extra_rows' has 5 rows for 3 samples"):
        adapter.sample_rows(inputs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("baseline", ["remove", "generic"])
def test_engine_attention_rows_equal_two_separate_builds(family, baseline):
    """The engine's one build of the a+ and a0 prompts gives exactly the attention rows of the two
    separate builds (the engine's inputs before issue 14's single call)."""
    adapter = adapter_for(family)
    config = LaserConfig.preset("laser", **{"vaq.baseline": baseline})
    engine = LaserEngine(adapter, config)
    images = sample_images(seed=3)
    try:
        with torch.no_grad():
            got = engine._attend(images, QUESTIONS)
            reference = adapter.build_inputs(
                images, [config.vaq.generic_prompt] * len(images) if baseline == "generic" else QUESTIONS,
                with_question=baseline == "generic",
            )
            expected = capture_attention(
                adapter, engine.probe, adapter.build_inputs(images, QUESTIONS), reference, config.prefix_reuse
            )
    finally:
        engine.probe.remove()
    assert got.prefix_reused == expected.prefix_reused
    assert torch.equal(got.a_plus, expected.a_plus) and torch.equal(got.a_zero, expected.a_zero)
    assert torch.equal(got.valid, expected.valid)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_continuation_equals_full_forward(family):
    """Two decoding steps on the KV cache through `adapter.forward` (positions from `adapter.position_ids`)
    give the logits of a full forward over the extended, left-padded prompts."""
    adapter = adapter_for(family)
    inputs = model_tensors(adapter.build_inputs(sample_images(), QUESTIONS))
    words = [["red", "box"], ["yes", "no"], ["blue", "digit"]]
    extra = torch.tensor([adapter.tokenizer.convert_tokens_to_ids(w) for w in words])
    with torch.no_grad():
        model_inputs = adapter.prepare_model_inputs(inputs)
        out = adapter.forward(model_inputs, use_cache=True)
        cache, mask = output_cache(out), model_inputs["attention_mask"]
        for step in range(extra.shape[1]):
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            step_inputs = {"input_ids": extra[:, step : step + 1], "attention_mask": mask}
            out = adapter.forward(step_inputs, cache, use_cache=True)
            cache = output_cache(out)
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        full["attention_mask"] = mask
        ref = adapter.forward(adapter.prepare_model_inputs(full), use_cache=False).logits[:, -1]
    torch.testing.assert_close(out.logits[:, -1], ref, atol=1e-4, rtol=0)


def _engine(adapter, preset: str) -> LaserEngine:
    overrides = {"decode.max_new_tokens": 3, "crop.min_side": 16, "vaq.top_heads": 2}
    if preset == "vicrop":
        overrides["crop.scales"] = "[0.1,0.15]"
    return LaserEngine(adapter, LaserConfig.preset(preset, **overrides))


@pytest.mark.parametrize("family", FAMILIES)
def test_presets_batch_equals_single(family):
    adapter = adapter_for(family)
    images = sample_images(seed=5)
    ran = []
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
            assert isinstance(b.answer, str) and b.path in ("vanilla", "direct", "contrastive"), preset
            assert b.token_ids == s.token_ids, preset
            assert (b.layer, b.box, b.path) == (s.layer, s.box, s.path), preset
            if engine.config.localize:
                assert 0 <= b.layer < adapter.num_layers and len(b.vaq) == adapter.num_layers, preset
                np.testing.assert_allclose(b.vaq, s.vaq, rtol=1e-5, atol=1e-5)
        ran.append(preset)
    assert "laser" in ran and "vanilla" in ran


@pytest.mark.parametrize("family", [f for f in FAMILIES if get_adapter_class(adapter_name(f)).supports_multi_image])
def test_multi_image_prompt_layout(family):
    adapter = adapter_for(family)
    images = [random_image(70, 40, 1), random_image(30, 60, 2)]
    inputs = adapter.build_inputs([images, images[0]], ["What is the color ?", "How many"])
    two, one = adapter.visual_layout(inputs, 0), adapter.visual_layout(inputs, 1)
    assert {s.image_index for s in two.segments} == {0, 1} and {s.image_index for s in one.segments} == {0}
    ids = inputs["input_ids"]
    for i, layout in enumerate((two, one)):
        assert (ids[i, layout.positions] == adapter.image_token_id).all()
        assert layout.positions.unique().numel() == layout.n_visual


# ----------------------------------------------------------------- (d) loading from a folder
@pytest.mark.parametrize("family", FAMILIES)
def test_create_adapter_from_folder(family, tmp_path):
    adapter = adapter_for(family)
    adapter.model.save_pretrained(tmp_path)
    adapter.processor.save_pretrained(tmp_path)
    loaded = create_adapter(tmp_path)
    assert type(loaded) is type(adapter) and loaded.name == adapter.name
    images = sample_images()[:1]
    inputs = adapter.build_inputs(images, QUESTIONS[:1])
    inputs_loaded = loaded.build_inputs(images, QUESTIONS[:1])
    torch.testing.assert_close(inputs_loaded["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        ref = adapter.model(**adapter.prepare_model_inputs(model_tensors(inputs))).logits
        out = loaded.model(**loaded.prepare_model_inputs(model_tensors(inputs_loaded))).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
