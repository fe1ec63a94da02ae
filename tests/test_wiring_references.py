"""How the engine wires its pieces, against references computed by hand on inputs where the wiring matters.

A tiny random model's attention and logits are near uniform, where a wrong layer, a swapped stream or a
cut on the wrong distribution change nothing; here the rows and logits are planted, peaked and
different from layer to layer and from stream to stream, and each expectation is computed from them
with the paper's formulas, not with the library's functions:

- LASER's l*, VAQ, map and box from planted attention rows (`relu(a+ - a0)`, top-K head norms,
  argmax over layers 1..L-1, head mean at l*);
- contrastive decoding token by token from planted z+ and z- (`(1 + alpha) z+ - alpha z-`, the cut on
  p+ < beta max p+);
- `vicrop` answers on the original and the crop, in that order;
- POPE's classification reads the text before the first period;
- VCD's alpha_bar_t itself.
"""

import math

import numpy as np
import pytest
import torch
from conftest import random_image

import laser.method.engine as engine_module
from laser.method.canvas import canvas_shape, paint_map, placed_layout
from laser.method.config import DecodeConfig, LaserConfig
from laser.method.crop import place_crop
from laser.method.decoding import generate
from laser.method.engine import LaserEngine
from laser.method.views import diffusion_alpha_bar
from laser.records.metrics import pope_answer

GRID = 24  # the tiny LLaVA's 24 x 24 visual tokens (336 px / patch 14)


# ----------------------------------------------------------------------------- LASER's map and box
def _blob(centre: tuple[int, int], radius: float = 1.5) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    return torch.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * radius**2)).flatten()


def planted_layers(num_layers: int, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a+ and a0 [layers, heads, 576]: a0 flat-ish; a+ has, per layer, a blob in a different place and of
    a different strength; layer 0 the strongest of all (left out of VAQ by default), layer 2 the
    strongest of the candidates."""
    g = torch.Generator().manual_seed(3)
    places = [(3, 3), (20, 4), (6, 17), (18, 19)]
    strength = [9.0, 2.0, 5.0, 3.0]
    a_zero = torch.rand(num_layers, num_heads, GRID * GRID, generator=g) * 0.2 + 1.0
    a_plus = a_zero.clone()
    for layer in range(num_layers):
        for head in range(num_heads):
            a_plus[layer, head] += strength[layer % 4] * (1 + 0.3 * head) * _blob(places[layer % 4])
    return a_plus / a_plus.sum(-1, keepdim=True), a_zero / a_zero.sum(-1, keepdim=True)


@pytest.fixture
def planted(monkeypatch, llava_adapter):
    from laser.method.attention import AttentionRows, pad_positions

    a_plus, a_zero = planted_layers(llava_adapter.num_layers, llava_adapter.num_heads)

    def capture(adapter, probe, inputs_q, inputs_0, prefix_reuse=True):
        layouts = [adapter.visual_layout(inputs_q, i) for i in range(len(inputs_q["input_ids"]))]
        _, valid = pad_positions(layouts)
        n = len(layouts)
        return AttentionRows(a_plus.expand(n, -1, -1, -1).clone(), a_zero.expand(n, -1, -1, -1).clone(), valid,
                             layouts, prefix_reused=False)

    monkeypatch.setattr(engine_module, "capture_attention", capture)
    return a_plus, a_zero


def test_laser_map_and_box_are_those_of_the_chosen_layer_by_hand(llava_adapter, planted):
    a_plus, a_zero = planted
    top_k = 8
    c = (a_plus.double() - a_zero.double()).clamp(min=0)  # [layers, heads, n]
    head_norms = c.norm(dim=-1)  # VAQ[l, h]
    k = min(top_k, head_norms.shape[1])
    vaq = head_norms.topk(k, dim=1).values.mean(dim=1)  # VAQ[l]
    layer = 1 + int(vaq[1:].argmax())  # layers 1..L-1
    heads = head_norms[layer].topk(k).indices
    expected_map = c[layer, heads].mean(dim=0)  # [576]
    assert layer == 2 and int(vaq.argmax()) == 0  # the planted rows make layer 0's VAQ the largest

    config = LaserConfig.preset("laser", **{"save_heatmap": True, "decode.mode": "direct", "decode.max_new_tokens": 1})
    image = random_image(336, 336, seed=4)
    pred = LaserEngine(llava_adapter, config).answer(image, "What digit is in the red box ?")
    assert pred.layer == layer
    assert np.allclose(pred.vaq, vaq.numpy(), rtol=1e-5)
    # the map: the heatmap's density at each token's cell centre times the cell's area is the token's value
    heat = pred.heatmap.double()
    h, w = heat.shape
    centres = [(int((r + 0.5) / GRID * h), int((col + 0.5) / GRID * w)) for r in range(GRID) for col in range(GRID)]
    values = torch.tensor([float(heat[y, x]) for y, x in centres], dtype=torch.float64) * (1 / GRID) ** 2
    assert torch.allclose(values, expected_map.double(), rtol=1e-4, atol=1e-9)
    # the box: the crop window on the map painted from the hand-made values
    inputs = llava_adapter.build_inputs([image], ["What digit is in the red box ?"])
    layout = placed_layout(llava_adapter.visual_layout(inputs, 0))
    canvas = paint_map(expected_map.float(), layout, 0, canvas_shape(image.size, config.crop.canvas))
    box = place_crop(canvas, image.size, config.crop.ratio, config.crop.min_side)
    assert tuple(pred.box) == tuple(box)
    centre = ((box[0] + box[2]) / 2 / 336 * GRID, (box[1] + box[3]) / 2 / 336 * GRID)
    assert abs(centre[0] - 17.5) < 4 and abs(centre[1] - 6.5) < 4  # around layer 2's blob (row 6, col 17)


# ----------------------------------------------------------------------------- contrastive decoding
def planted_steps(vocab: int, eos: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """z+ and z- per step for one sample: at each step token `b` wins under VAT with the cut on p+;
    the largest VAT score `c` is cut (p+(c) < beta max p+); the top of z+ is `a`, and of z- too, so a
    swapped stream, a cut on p-, or plain z+ give another token. The last step ends with EOS."""
    plans = [(7, 8, 9), (11, 12, 13), (15, 16, 17)]
    pos, neg = [], []
    for a, b, c in plans:
        zp = torch.full((vocab,), -30.0)
        zn = torch.full((vocab,), -30.0)
        zp[a], zp[b], zp[c] = 5.0, 4.0, -3.0  # p+(c) / p+(a) = e^-8 < 0.1
        zn[a], zn[b], zn[c] = 10.0, -5.0, -20.0
        pos.append(zp)
        neg.append(zn)
    zp = torch.full((vocab,), -30.0)
    zp[eos] = 5.0
    pos.append(zp)
    neg.append(zp.clone())
    return pos, neg


def by_hand(z_pos: torch.Tensor, z_neg: torch.Tensor, alpha: float, beta: float) -> int:
    scores = [(1 + alpha) * float(z_pos[v]) - alpha * float(z_neg[v]) for v in range(len(z_pos))]
    p = torch.softmax(z_pos.double(), dim=0)
    kept = [v for v in range(len(z_pos)) if p[v] >= beta * p.max()]
    return max(kept, key=lambda v: scores[v])


def test_contrastive_tokens_equal_the_vat_rule_step_by_step(llava_adapter):
    model = llava_adapter.model
    eos = llava_adapter.eos_token_ids()[0]
    vocab = model.config.text_config.vocab_size
    pos, neg = planted_steps(vocab, eos)
    calls = []

    def plant(module, args, kwargs, output):  # rows [0, 1): positive stream, [1, 2): negative
        step = len(calls)
        calls.append(step)
        output.logits = torch.stack([pos[step], neg[step]])[:, None, :].to(output.logits.dtype)
        return output

    images = [random_image(336, 336, seed=1), random_image(336, 336, seed=2)]
    inputs = llava_adapter.build_inputs(images, ["What is it ?", "What is it ?"])
    cfg = DecodeConfig(mode="contrastive", alpha=1.0, beta=0.1, max_new_tokens=8, do_sample=False)
    expected = [by_hand(p, n, cfg.alpha, cfg.beta) for p, n in zip(pos[:-1], neg[:-1])]
    assert expected == [8, 12, 16]
    assert [int(p.argmax()) for p in pos[:-1]] == [7, 11, 15]  # plain z+ would differ
    handle = model.register_forward_hook(plant, with_kwargs=True)
    try:
        tokens, fallbacks = generate(llava_adapter, dict(inputs), cfg, contrastive=True)
    finally:
        handle.remove()
    assert tokens == [expected] and fallbacks == [None]
    # and with the cut off (beta 0) the largest VAT score wins: the cut is what removed it
    calls.clear()
    handle = model.register_forward_hook(plant, with_kwargs=True)
    try:
        uncut, _ = generate(llava_adapter, dict(inputs), DecodeConfig(mode="contrastive", alpha=1.0, beta=0.0,
                                                                         max_new_tokens=8, do_sample=False),
                            contrastive=True)
    finally:
        handle.remove()
    assert uncut == [[9, 13, 17]]


# ----------------------------------------------------------------------------- vicrop's two images
def test_vicrop_answers_on_the_original_then_the_crop(llava_adapter, monkeypatch):
    calls = []
    real = llava_adapter.build_inputs

    def record(images, questions, **kwargs):
        calls.append([list(im) if isinstance(im, (list, tuple)) else [im] for im in images])
        return real(images, questions, **kwargs)

    monkeypatch.setattr(llava_adapter, "build_inputs", record)
    image = random_image(500, 400, seed=8)
    pred = LaserEngine(llava_adapter, LaserConfig.preset("vicrop")).answer(image, "Is there a red box ?")
    answer_images = calls[-1][0]  # the answer stage: the last prompt built
    assert len(answer_images) == 2
    original, crop = answer_images
    assert np.array_equal(np.asarray(original), np.asarray(image))
    assert np.array_equal(np.asarray(crop), np.asarray(image.crop(tuple(pred.box))))


# ----------------------------------------------------------------------------- POPE and VCD
@pytest.mark.parametrize("prediction, expected", [
    ("Yes. There is not a dog in the image.", "yes"),  # the words after the first period do not count
    ("Yes, there is. No other animal", "yes"),
    ("No. Yes, there is one.", "no"),
    ("There is not one.", "no"),
])
def test_pope_reads_the_text_before_the_first_period(prediction, expected):
    assert pope_answer(prediction) == expected


def test_vcd_alpha_bar_equals_the_reference_schedule():
    betas = [1 / (1 + math.exp(-x)) * (0.5e-2 - 1e-5) + 1e-5 for x in np.linspace(-6, 6, 1000)]
    for step in (0, 1, 250, 499, 500, 999):
        reference = float(np.prod([1 - b for b in betas[: step + 1]]))  # VCD's alphas_bar[t], t 0-based
        assert diffusion_alpha_bar(step, 1000) == pytest.approx(reference, rel=1e-12)
