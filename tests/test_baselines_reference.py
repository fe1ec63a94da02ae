"""`vicrop` and `vcd` against their papers' code (issue 15), on planted inputs, each compared with an
implementation written here from the reference's definition (ViCrop: `saccharomycetes/mllms_know`,
`utils.py` and the model method scripts; VCD: `DAMO-NLP-SG/VCD`, `vcd_add_noise.py`, `vcd_sample.py`):

- VCD: forward diffusion noise at t=500 of 1000 added to the processed, normalised pixel tensor,
  unclamped, so its std at the model input is sqrt(1 - alpha_bar_t) whatever the photo's size; sampling.
- ViCrop: the map mean_h(a+) / mean_h(a0); the multi-scale box; rel_att_high tiles; per-family settings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adapter_checks import eager_rows
from conftest import random_image
from laser.adapters import create_adapter
from tiny_models import TINY_BUILDERS

from laser import LaserConfig, LaserEngine

GENERIC = "Write a general description of the image."
RATIOS = (1, 1.2, 1.4, 1.6, 1.8, 2)
_ADAPTERS: dict[str, object] = {}


def tiny_adapter(family: str):
    if family not in _ADAPTERS:
        model, processor = TINY_BUILDERS[family]()
        _ADAPTERS[family] = create_adapter(family, model=model, processor=processor)
    return _ADAPTERS[family]


# ----------------------------------------------------------------------------- the references
def reference_alpha_bar(t: int, steps: int = 1000) -> float:
    """VCD: betas = sigmoid(linspace(-6, 6, steps)) * (5e-3 - 1e-5) + 1e-5; alpha_bar_t = prod (1 - beta)."""
    betas = [1 / (1 + math.exp(-x)) * (0.5e-2 - 1e-5) + 1e-5 for x in np.linspace(-6, 6, steps)]
    return float(np.prod([1 - b for b in betas[: t + 1]]))


def reference_box(att: np.ndarray, image_size, base: int, ratios=RATIOS):
    """ViCrop's adaptive box, from its definition: for each ratio, windows of int(base * ratio / cell)
    whole cells at every cell position; the best window's sharpness is (its sum - the mean of the
    windows one cell left/right/up/down) / cells; the sharpest ratio's square of side base * ratio is
    centred on its window, kept inside the image."""
    width, height = image_size
    rows, cols = att.shape
    cell_w, cell_h = width / cols, height / rows
    found = []
    for ratio in ratios:
        nx = min(int(base * ratio / cell_w), cols)
        ny = min(int(base * ratio / cell_h), rows)
        if cols - nx < 1 and rows - ny < 1:
            if ratio == ratios[0]:
                return (0, 0, width, height)
            continue
        windows, best, where = {}, -np.inf, None
        for x in range(cols - nx + 1):
            for y in range(rows - ny + 1):
                windows[x, y] = float(att[y : y + ny, x : x + nx].sum())
                if windows[x, y] > best:
                    best, where = windows[x, y], (x, y)
        x, y = where
        around = [windows[p] for p in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)) if p in windows]
        found.append(((best - np.mean(around)) / (nx * ny), ratio, x, y, nx, ny))
    _, ratio, x, y, nx, ny = max(found, key=lambda f: f[0])  # the first of equal maxima
    half = base * ratio // 2
    xc, yc = int(x * cell_w + cell_w * nx / 2), int(y * cell_h + cell_h * ny / 2)
    xc = half if xc < half else xc
    yc = half if yc < half else yc
    xc = width - half if xc > width - half else xc
    yc = height - half if yc > height - half else yc
    return (int(max(0, xc - half)), int(max(0, yc - half)), int(min(width, xc + half)), int(min(height, yc + half)))


def reference_tiles(image_size, threshold: int = 1024):
    """ViCrop's `high_res_split_threshold` (for the landscape sizes where it is defined)."""
    width, height = image_size
    v = int(np.ceil(height / threshold))
    h = int(v * width / height)
    sw, sh = int(np.ceil(width / h)), int(np.ceil(height / v))
    return [(i * sw, j * sh, (i + 1) * sw, (j + 1) * sh) for j in range(v) for i in range(h)]


def reference_rel_map(adapter, image, question: str, layer: int) -> np.ndarray:
    """ViCrop's rel-att on a single-grid family: mean over heads of the last prompt row over the image
    tokens at `layer` (eager output_attentions), divided by the same for the generic prompt."""
    plus = eager_rows(adapter, adapter.build_inputs([image], [question]))[0, layer].mean(0)
    zero = eager_rows(adapter, adapter.build_inputs([image], [GENERIC]))[0, layer].mean(0)
    return (plus / zero).double().numpy()


def heatmap_cells(heatmap: torch.Tensor, grid, region=(0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """Token values back from a density heatmap: the value at each cell's centre times the cell's area."""
    rows, cols = grid
    height, width = heatmap.shape
    x0, y0, x1, y1 = region
    area = (x1 - x0) / cols * (y1 - y0) / rows
    out = np.zeros(grid)
    for r in range(rows):
        for c in range(cols):
            u, v = x0 + (c + 0.5) * (x1 - x0) / cols, y0 + (r + 0.5) * (y1 - y0) / rows
            out[r, c] = float(heatmap[int(v * height), int(u * width)]) * area
    return out


@pytest.fixture
def planted_rows(monkeypatch):
    """The engine's two attention passes replaced by planted rows: sparse, peaky a+ and a0 that differ
    from head to head (a tiny random model's attention is near uniform, where every rule agrees).
    Returns a dict that receives the rows of the last call."""
    import laser.method.engine as engine_module
    from laser.method.attention import AttentionRows, pad_positions

    planted: dict[str, torch.Tensor] = {}

    def capture(adapter, probe, inputs_q, inputs_0, prefix_reuse=True):
        layouts = [adapter.visual_layout(inputs_q, i) for i in range(len(inputs_q["input_ids"]))]
        _, valid = pad_positions(layouts)
        g = torch.Generator().manual_seed(17)
        shape = (len(layouts), adapter.num_layers, adapter.num_heads, valid.shape[1])
        rows = []
        for _ in range(2):
            a = torch.rand(shape, generator=g) ** 8 + 1e-4
            blob = torch.randint(0, shape[-1] - 60, (), generator=g)
            a[..., blob : blob + 60 : 3] += torch.rand(shape[:-1], generator=g)[..., None]  # a bright band
            rows.append(a / a.sum(-1, keepdim=True) * valid[:, None, None, :])
        planted.update(a_plus=rows[0], a_zero=rows[1])
        return AttentionRows(rows[0], rows[1], valid, layouts, prefix_reused=False)

    monkeypatch.setattr(engine_module, "capture_attention", capture)
    return planted


def planted_map(planted, layer: int, row: int = 0) -> np.ndarray:
    """ViCrop's map on the planted rows: mean over heads of a+ / mean over heads of a0."""
    return (planted["a_plus"][row, layer].double().mean(0) / planted["a_zero"][row, layer].double().mean(0)).numpy()


# ----------------------------------------------------------------------------- VCD
def _model_pixel_inputs(adapter, engine, image):
    """pixel_values the model receives on the decode prefill: [2, ...] (positive, negative)."""
    seen = []

    def hook(module, args, kwargs):
        if kwargs.get("pixel_values") is not None:
            seen.append(kwargs["pixel_values"].detach().clone())

    handle = adapter.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        engine.answer(image, "What is the color ?", seed=7)
    finally:
        handle.remove()
    return seen[0]


def test_vcd_noise_std_at_the_model_input_is_sqrt_one_minus_alpha_bar_at_any_photo_size(llava_adapter):
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vcd", **{"decode.max_new_tokens": 1}))
    alpha_bar = reference_alpha_bar(500)
    processor = llava_adapter.processor.image_processor
    mean, std = np.asarray(processor.image_mean), np.asarray(processor.image_std)
    top = float(((1 - mean) / std).max())  # the largest value an 8-bit image can take once normalised
    stds = {}
    for size in [(336, 336), (4000, 3000)]:
        pixels = _model_pixel_inputs(llava_adapter, engine, random_image(*size, seed=3)).double()
        positive, negative = pixels[0], pixels[1]
        residual = negative - math.sqrt(alpha_bar) * positive
        stds[size] = float(residual.std())
        assert stds[size] == pytest.approx(math.sqrt(1 - alpha_bar), rel=0.01), size
        assert abs(float(residual.mean())) < 0.01
        assert float(negative.max()) > top + 0.1  # unclamped
    assert stds[(336, 336)] == pytest.approx(stds[(4000, 3000)], rel=0.01)


@pytest.mark.parametrize("family", ["llava_next", "idefics3", "qwen2_vl", "internvl"])
def test_vcd_noise_per_sample_whatever_the_batch_and_padding_stays_zero(family):
    from laser.method.views import diffusion_noise_inputs

    adapter = tiny_adapter(family)
    images = [random_image(w, h, i) for i, (w, h) in enumerate([(70, 40), (30, 90), (56, 56)])]
    questions = ["What is the color ?"] * 3
    seeds = [5, 6, 7]
    alpha_bar = reference_alpha_bar(500)
    batch = adapter.build_inputs(images, questions)
    rows = adapter.pixel_rows(batch)
    noisy = diffusion_noise_inputs(batch, rows, seeds, 500, 1000)
    for key, counts in rows.items():
        starts = np.cumsum([0] + counts)
        clean, dirty = batch[key], noisy[key]
        padding = (clean == 0).flatten(-3).all(-1) if clean.ndim >= 4 else torch.zeros(clean.shape[0], dtype=torch.bool)
        assert (dirty[padding] == 0).all(), "padding must stay zero"
        residual = (dirty - math.sqrt(alpha_bar) * clean)[~padding]
        assert float(residual.std()) == pytest.approx(math.sqrt(1 - alpha_bar), rel=0.05)
        for i in range(3):
            single = adapter.build_inputs([images[i]], [questions[i]])
            alone = diffusion_noise_inputs(single, adapter.pixel_rows(single), [seeds[i]], 500, 1000)[key]
            part = dirty[starts[i] : starts[i + 1]]
            part = part[tuple(slice(0, n) for n in alone.shape)]
            torch.testing.assert_close(part, alone, rtol=0, atol=0)


def test_vcd_samples_like_the_reference_and_runs_repeat(llava_adapter, five_samples):
    images, questions = five_samples
    cfg = LaserConfig.preset("vcd", **{"decode.max_new_tokens": 6})
    d = cfg.decode
    assert (d.do_sample, d.temperature, d.top_k, d.top_p, d.alpha, d.beta) == (True, 1.0, 0, 1.0, 1.0, 0.1)
    greedy = LaserConfig.preset("vcd_greedy")
    assert not greedy.decode.do_sample and greedy.counterfactual == cfg.counterfactual
    engine = LaserEngine(llava_adapter, cfg)
    seeds = [1, 2, 3, 4, 5]
    first = [p.token_ids for p in engine.answer_batch(images, questions, seeds)]
    again = [p.token_ids for p in engine.answer_batch(images, questions, seeds)]
    other = [p.token_ids for p in engine.answer_batch(images, questions, [s + 50 for s in seeds])]
    assert first == again and first != other


# ----------------------------------------------------------------------------- ViCrop: the map
def test_ratio_map_divides_head_means():
    from laser.method.vaq import ratio_map

    g = torch.Generator().manual_seed(0)
    a_plus = torch.rand(2, 3, 4, 10, generator=g) ** 3
    a_zero = torch.rand(2, 3, 4, 10, generator=g) ** 3
    layer = torch.tensor([1, 2])
    out = ratio_map(a_plus, a_zero, layer, None)
    for b in range(2):
        for n in range(10):
            plus = sum(float(a_plus[b, layer[b], h, n]) for h in range(4)) / 4
            zero = sum(float(a_zero[b, layer[b], h, n]) for h in range(4)) / 4
            assert float(out[b, n]) == pytest.approx(plus / zero, rel=1e-5)
    per_head = (a_plus / a_zero)[torch.arange(2), layer].mean(1)
    assert not torch.allclose(out, per_head, rtol=0.05)  # planted so that the two definitions differ


def test_vicrop_map_is_the_ratio_of_head_means_on_planted_attention(llava_adapter, planted_rows):
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vicrop", save_heatmap=True))
    pred = engine.answer(random_image(336, 336, seed=11), "What digit is in the blue box ?")
    assert pred.layer == 2  # ViCrop's layer 14 of 32 on the 4-layer test model
    expected = planted_map(planted_rows, 2).reshape(24, 24)
    np.testing.assert_allclose(heatmap_cells(pred.heatmap, (24, 24)), expected, rtol=1e-4)
    per_head = (planted_rows["a_plus"][0, 2] / planted_rows["a_zero"][0, 2]).mean(0).double().numpy()
    assert np.abs(per_head.reshape(24, 24) - expected).max() > 0.1 * np.abs(expected).max()


def test_vicrop_map_equals_vicrop_rel_att_on_the_model(llava_adapter):
    image = random_image(336, 336, seed=11)
    question = "What digit is in the blue box ?"
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vicrop", save_heatmap=True))
    pred = engine.answer(image, question)
    expected = reference_rel_map(llava_adapter, image, question, pred.layer).reshape(24, 24)
    np.testing.assert_allclose(heatmap_cells(pred.heatmap, (24, 24)), expected, rtol=1e-4)


# ----------------------------------------------------------------------------- ViCrop: the box
def test_multiscale_box_on_a_planted_map_picks_the_sharpest_ratio():
    from laser.method.crop import place_multiscale_crop

    cells = np.zeros((10, 10))
    cells[4:7, 4:7] = 1.0  # a 3x3 block: 2-cell windows score (4 - 3) / 4, 3-cell ones (9 - 6) / 9
    box = reference_box(cells, (1000, 1000), 200)
    assert box == (390, 390, 710, 710)  # ratio 1.6 (3 cells of 100 px), side 2 * (320 // 2)
    assert place_multiscale_crop(torch.from_numpy(cells), (1000, 1000), 200, list(RATIOS)) == box


def test_multiscale_box_equals_reference_on_random_maps():
    from laser.method.crop import place_multiscale_crop

    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(150):
        rows, cols = int(rng.integers(3, 30)), int(rng.integers(3, 30))
        base = int(rng.choice([224, 336]))
        # cells no wider than the base box (ViCrop's windows would hold no cell otherwise)
        size = (int(rng.integers(120, min(3000, cols * base))), int(rng.integers(120, min(3000, rows * base))))
        cells = rng.exponential(1.0, (rows, cols)) ** 3
        for _ in range(int(rng.integers(0, 3))):  # blobs of a few cells
            r, c, h, w = rng.integers(0, rows), rng.integers(0, cols), rng.integers(1, 5), rng.integers(1, 5)
            cells[r : r + h, c : c + w] += rng.uniform(5, 50)
        expected = reference_box(cells, size, base)
        assert place_multiscale_crop(torch.from_numpy(cells), size, base, list(RATIOS)) == expected
        sides.add(round((expected[2] - expected[0]) / base, 1))
    assert len(sides) > 3  # the maps exercise several ratios, not only the smallest window


def test_vicrop_box_with_whole_image_geometry_equals_vicrop_code(llava_adapter):
    image = random_image(700, 500, seed=12)
    question = "Is there a red box ?"
    cfg = LaserConfig.preset("vicrop", **{"crop.geometry": "whole"})
    pred = LaserEngine(llava_adapter, cfg).answer(image, question)
    att = reference_rel_map(llava_adapter, image, question, 2).reshape(24, 24)
    assert tuple(pred.box) == reference_box(att, image.size, 336)


def test_vicrop_box_on_planted_attention_both_geometries(llava_adapter, planted_rows):
    image = random_image(900, 560, seed=12)
    cfg = LaserConfig.preset("vicrop", **{"crop.geometry": "whole"})
    pred = LaserEngine(llava_adapter, cfg).answer(image, "Is there a red box ?")
    assert tuple(pred.box) == reference_box(planted_map(planted_rows, 2).reshape(24, 24), image.size, 336)
    # a 2:1 image: the processor keeps its centre 336 x 336 (cells 12..35 of a 48-wide grid of 14 px)
    image = random_image(672, 336, seed=13)
    pred = LaserEngine(llava_adapter, LaserConfig.preset("vicrop")).answer(image, "Is there a red box ?")
    grid = np.zeros((24, 48))
    grid[:, 12:36] = planted_map(planted_rows, 2).reshape(24, 24)
    assert tuple(pred.box) == reference_box(grid, image.size, 336)


def test_vicrop_box_with_processor_geometry_places_the_grid_on_the_kept_region(llava_adapter):
    image = random_image(672, 336, seed=13)
    question = "Is there a red box ?"
    pred = LaserEngine(llava_adapter, LaserConfig.preset("vicrop", save_heatmap=True)).answer(image, question)
    grid = np.zeros((24, 48))
    grid[:, 12:36] = reference_rel_map(llava_adapter, image, question, 2).reshape(24, 24)
    assert tuple(pred.box) == reference_box(grid, image.size, 336)
    heat = pred.heatmap
    assert float(heat[:, : heat.shape[1] // 4].abs().sum()) == 0 and float(heat[:, -heat.shape[1] // 4 :].abs().sum()) == 0


# ----------------------------------------------------------------------------- ViCrop: rel_att_high
@pytest.mark.parametrize("size", [(4000, 3000), (2100, 1100), (1500, 1000), (3000, 1000), (1030, 1030)])
def test_high_res_tiles_follow_vicrop_split(size):
    from laser.method.crop import high_res_tiles

    expected = [(x0, y0, min(x1, size[0]), min(y1, size[1])) for x0, y0, x1, y1 in reference_tiles(size)]
    assert high_res_tiles(size, 1024) == expected


def test_vicrop_high_box_on_planted_attention(llava_adapter, planted_rows):
    image = random_image(2100, 1100, seed=14)  # 2 x 3 tiles of 700 x 550
    cfg = LaserConfig.preset("vicrop_high", **{"crop.geometry": "whole"})
    pred = LaserEngine(llava_adapter, cfg).answer(image, "What is the color ?")
    maps = [planted_map(planted_rows, 2, row).reshape(24, 24) for row in range(6)]
    blocked = np.block([maps[j : j + 3] for j in range(0, 6, 3)])
    assert tuple(pred.box) == reference_box(blocked, image.size, 336)


def test_vicrop_high_box_equals_vicrop_code_on_tiles(llava_adapter):
    image = random_image(2100, 1100, seed=14)  # 2 x 3 tiles of 700 x 550
    question = "What is the color ?"
    cfg = LaserConfig.preset("vicrop_high", **{"crop.geometry": "whole"})
    pred = LaserEngine(llava_adapter, cfg).answer(image, question)
    tiles = reference_tiles(image.size)
    assert len(tiles) == 6
    maps = [reference_rel_map(llava_adapter, image.crop(t), question, 2).reshape(24, 24) for t in tiles]
    blocked = np.block([maps[j : j + 3] for j in range(0, 6, 3)])
    assert tuple(pred.box) == reference_box(blocked, image.size, 336)


# ----------------------------------------------------------------------------- per-family settings
def test_qwen2_5_vl_reference_layer_and_224_px_base_box():
    adapter = tiny_adapter("qwen2_5_vl")
    assert (adapter.default_layer, adapter.reference_num_layers, adapter.crop_box_side) == (22, 36, 224)
    engine = LaserEngine(adapter, LaserConfig.preset("vicrop"))
    assert engine.static_layer() == round(22 / 36 * adapter.num_layers)
    # a 300 px image: the 448 px native side would be the whole image, ViCrop's 224 px box is not
    pred = engine.answer(random_image(300, 300, seed=2), "What is the color ?")
    side = pred.box[2] - pred.box[0]
    assert side == pred.box[3] - pred.box[1] and side in {2 * (224 * r // 2) for r in RATIOS}


def test_instructblip_map_chains_lm_layer_15_with_qformer_cross_attention_layer_2():
    adapter = tiny_adapter("instructblip")
    assert (adapter.default_layer, adapter.cross_attention_layer) == (15, 2)
    blip = adapter.model.blip
    count = sum(layer.has_cross_attention for layer in blip.qformer.encoder.layer)
    cross_index = round(2 / 6 * count)  # ViCrop's index 2 of 6, at the test Q-Former's depth
    lm_layer = round(15 / 32 * adapter.num_layers)
    image, question = random_image(64, 64, seed=4), "What is the color ?"
    engine = LaserEngine(adapter, LaserConfig.preset("vicrop", save_heatmap=True))
    pred = engine.answer(image, question)
    assert pred.layer == lm_layer

    def chained(text: str) -> torch.Tensor:
        inputs = adapter.build_inputs([image], [text])
        configs = [blip.config, blip.config.text_config, blip.config.qformer_config]
        saved = [c._attn_implementation for c in configs]
        try:
            for c in configs:
                c._attn_implementation = "eager"
            with torch.no_grad():
                features = blip.get_image_features(
                    inputs["pixel_values"], qformer_input_ids=inputs["qformer_input_ids"],
                    qformer_attention_mask=inputs["qformer_attention_mask"], output_attentions=True,
                    return_dict=True,
                )
                out = blip(**{k: v for k, v in inputs.items() if not k.startswith("laser_")}, output_attentions=True)
        finally:
            for c, s in zip(configs, saved):
                c._attn_implementation = s
        queries = (inputs["input_ids"][0] == adapter.image_token_id).nonzero().flatten()
        lm = out.language_model_outputs.attentions[lm_layer][0, :, -1, queries].mean(0)  # [queries]
        cross = features.qformer_outputs.cross_attentions[cross_index][0, :, :, 1:].mean(0)  # [queries, patches]
        return (lm @ cross).double()

    expected = (chained(question) / chained(GENERIC)).numpy().reshape(adapter.grid)
    np.testing.assert_allclose(heatmap_cells(pred.heatmap, adapter.grid), expected, rtol=1e-3)


def test_static_layer_is_rescaled_to_the_reference_depth(llava_adapter, monkeypatch):
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vicrop"))
    assert engine.static_layer() == round(14 / 32 * llava_adapter.num_layers)
    # a layer that exists on the model is rescaled too: layer 3 of a 16-layer reference -> 1 of 4 here
    monkeypatch.setattr(llava_adapter, "default_layer", 3)
    monkeypatch.setattr(llava_adapter, "reference_num_layers", 16)
    assert engine.static_layer() == 1
    qwen = tiny_adapter("qwen2_vl")  # Qwen2-VL: layer 12 of 28
    assert LaserEngine(qwen, LaserConfig.preset("vicrop")).static_layer() == round(12 / 28 * qwen.num_layers)


def _tied_maps() -> dict[str, np.ndarray]:
    """24 x 24 maps where several windows hold exactly the same mass."""
    rng = np.random.default_rng(5)
    maps = {"flat": np.ones((24, 24))}
    for r, c in ((0, 0), (11, 12), (23, 5)):
        one_hot = np.zeros((24, 24))
        one_hot[r, c] = 1.0
        maps[f"one-hot {r},{c}"] = one_hot
    for k in range(3):
        maps[f"integers {k}"] = rng.integers(0, 3, (24, 24)).astype(float)
    twins = np.zeros((24, 24))
    twins[3:6, 3:6] = twins[15:18, 15:18] = 1.0
    maps["twin blobs"] = twins
    return maps


@pytest.fixture
def tied_rows(monkeypatch):
    """The engine's attention passes replaced by rows whose ViCrop map is `tied_rows["map"]` exactly:
    a+ = the map normalised, the same in every head and layer; a0 flat."""
    import laser.method.engine as engine_module
    from laser.method.attention import AttentionRows, pad_positions

    chosen: dict[str, np.ndarray] = {}

    def capture(adapter, probe, inputs_q, inputs_0, prefix_reuse=True):
        layouts = [adapter.visual_layout(inputs_q, i) for i in range(len(inputs_q["input_ids"]))]
        _, valid = pad_positions(layouts)
        shape = (len(layouts), adapter.num_layers, adapter.num_heads, valid.shape[1])
        values = torch.from_numpy(chosen["map"].reshape(-1)).float()
        a_plus = (values / values.sum()).expand(shape).clone()
        a_zero = torch.full(shape, 1.0 / shape[-1])
        return AttentionRows(a_plus, a_zero, valid, layouts, prefix_reused=False)

    monkeypatch.setattr(engine_module, "capture_attention", capture)
    return chosen


def test_vicrop_box_on_tied_maps_follows_vicrop_first_in_order_rule(llava_adapter, tied_rows):
    whole = LaserEngine(llava_adapter, LaserConfig.preset("vicrop", **{"crop.geometry": "whole"}))
    kept = LaserEngine(llava_adapter, LaserConfig.preset("vicrop"))
    checked = 0
    for name, cells in _tied_maps().items():
        tied_rows["map"] = cells
        values = torch.from_numpy(cells).float()  # mean_h(a+) / mean_h(a0), in the rows' float32
        ratio = ((values / values.sum()) / torch.tensor(1.0 / cells.size)).double().numpy()
        for size in ((700, 500), (900, 560), (1000, 1000), (640, 480), (1300, 700)):
            pred = whole.answer(random_image(*size, seed=1), "Is there a red box ?")
            assert tuple(pred.box) == reference_box(ratio, size, 336), (name, size)
            checked += 1
        # the processor keeps the centre 336 x 336 of a 2:1 image: cells 12..35 of a 48-wide grid
        grid = np.zeros((24, 48))
        grid[:, 12:36] = ratio
        pred = kept.answer(random_image(672, 336, seed=1), "Is there a red box ?")
        assert tuple(pred.box) == reference_box(grid, (672, 336), 336), (name, "processor")
        checked += 1
    assert checked == 48
