"""End to end on a tiny random LLaVA: every preset, batch equals one by one, prediction fields."""

import pytest
import torch
from adapter_checks import eager_rows, reference_vaq

from laser import LaserConfig, LaserEngine, Prediction, list_presets
from laser.method.vaq import default_candidates

PRESETS = list_presets()


def _same(a: Prediction, b: Prediction) -> bool:
    return (
        a.answer == b.answer
        and a.token_ids == b.token_ids
        and a.layer == b.layer
        and a.box == b.box
        and a.path == b.path
        and (a.vaq is None) == (b.vaq is None)
        and (a.vaq is None or torch.allclose(torch.tensor(a.vaq), torch.tensor(b.vaq), atol=1e-5))
    )


def test_expected_presets_exist():
    expected = {"vanilla", "vicrop", "vcd", "laser", "laser_full", "laser_static", "raw_att", "laser_nocrop"}
    assert expected <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_answer_batch_equals_answers_one_by_one(llava_adapter, five_samples, preset):
    images, questions = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset(preset))
    batch = engine.answer_batch(images, questions)
    single = [engine.answer(im, q) for im, q in zip(images, questions)]
    assert len(batch) == 5
    for i, (b, s) in enumerate(zip(batch, single)):
        assert _same(b, s), f"{preset} sample {i}: batch {b} != single {s}"
        assert isinstance(b.answer, str) and b.path in ("direct", "contrastive")
        assert set(b.timings) >= {"decode", "total"}


def test_sampling_batch_equals_one_by_one_and_is_seeded(llava_adapter, five_samples):
    images, questions = five_samples
    cfg = LaserConfig.preset("laser_full", **{"decode.do_sample": True, "decode.temperature": 1.5})
    engine = LaserEngine(llava_adapter, cfg)
    seeds = [11, 12, 13, 14, 15]
    batch = engine.answer_batch(images, questions, seeds)
    single = [engine.answer(im, q, seed=s) for im, q, s in zip(images, questions, seeds)]
    assert all(_same(b, s) for b, s in zip(batch, single))
    other = engine.answer_batch(images, questions, [s + 100 for s in seeds])
    assert any(a.token_ids != b.token_ids for a, b in zip(batch, other))


# docs/method.md, Routing: contrastive when l*/L >= gate.depth (0-based l*), L = 4 decoder layers here.
# With the default depth 0.5 an l* of 2 or 3 routes to contrastive and 1 to direct; depth 1.0 makes every layer
# direct, so both sides of the gate are checked on the same samples.
@pytest.mark.parametrize("depth", [0.5, 1.0])
def test_laser_prediction_fields(llava_adapter, five_samples, depth):
    adapter = llava_adapter
    images, questions = five_samples
    engine = LaserEngine(adapter, LaserConfig.preset("laser", **{"gate.depth": depth}))
    for image, question, pred in zip(images, questions, engine.answer_batch(images, questions)):
        a_plus = eager_rows(adapter, adapter.build_inputs([image], [question]))[0]
        a_zero = eager_rows(adapter, adapter.build_inputs([image], [question], with_question=False))[0]
        expected_vaq = reference_vaq(a_plus, a_zero, engine.config.vaq.top_heads)
        torch.testing.assert_close(torch.tensor(pred.vaq), torch.tensor(expected_vaq), atol=1e-6, rtol=1e-4)
        assert pred.layer == max(default_candidates(len(expected_vaq)), key=expected_vaq.__getitem__)
        assert pred.path == ("contrastive" if pred.layer / len(expected_vaq) >= depth else "direct")
        x0, y0, x1, y1 = pred.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
        record = pred.to_record()
        assert set(record) >= {"prediction", "layer", "vaq", "box", "path", "timings"}


def test_gate_depth_routes_paths(llava_adapter, five_samples):
    images, questions = five_samples
    always = LaserEngine(llava_adapter, LaserConfig.preset("laser", **{"gate.depth": 0.0}))
    never = LaserEngine(llava_adapter, LaserConfig.preset("laser", **{"gate.depth": 1.01}))
    assert {p.path for p in always.answer_batch(images, questions)} == {"contrastive"}
    assert {p.path for p in never.answer_batch(images, questions)} == {"direct"}


def test_the_gate_routes_to_contrastive_at_exactly_its_depth(llava_adapter, five_samples):
    """l*/L == gate.depth is deep enough (docs/method.md, Routing: >=); a depth just above it is not."""
    image, question = five_samples[0][0], five_samples[1][0]
    num_layers = llava_adapter.num_layers
    layer = LaserEngine(llava_adapter, LaserConfig.preset("laser")).answer(image, question).layer
    at = LaserEngine(llava_adapter, LaserConfig.preset("laser", **{"gate.depth": layer / num_layers}))
    above = LaserEngine(llava_adapter, LaserConfig.preset("laser", **{"gate.depth": (layer + 0.5) / num_layers}))
    on, off = at.answer(image, question), above.answer(image, question)
    assert on.layer == off.layer == layer
    assert (on.path, off.path) == ("contrastive", "direct")


def test_vanilla_equals_plain_greedy_generate(llava_adapter, five_samples):
    images, questions = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vanilla", **{"decode.max_new_tokens": 6}))
    pred = engine.answer(images[0], questions[0])
    inputs = llava_adapter.build_inputs([images[0]], [questions[0]])
    inputs = {k: v for k, v in inputs.items() if not k.startswith("laser_")}
    out = llava_adapter.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = llava_adapter.tokenizer.eos_token_id
    expected = new[: new.index(eos)] if eos in new else new
    assert pred.token_ids == expected


def test_static_layer_and_fixed_selection(llava_adapter, five_samples):
    images, questions = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("laser_static", **{"vaq.layer": 1}))
    assert {p.layer for p in engine.answer_batch(images[:2], questions[:2])} == {1}
    # LLaVA-1.5's layer 14 of 32 maps to the same relative depth on the 4-layer test model
    assert LaserEngine(llava_adapter, LaserConfig.preset("vicrop")).static_layer() == 2


def test_heatmap_saved_on_request(llava_adapter, five_samples):
    images, questions = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("laser", save_heatmap=True))
    pred = engine.answer(images[0], questions[0])
    assert pred.heatmap is not None and pred.heatmap.ndim == 2 and pred.heatmap.sum() > 0


@pytest.mark.parametrize(
    "images,questions,error,match",
    [
        (["not an image"], ["q"], TypeError, r"images\[0\]"),
        ([None], ["What ?"], TypeError, r"images\[0\]"),
        ([], ["What ?"], ValueError, "0 images for 1 questions"),
    ],
)
def test_bad_inputs_name_the_input(llava_adapter, images, questions, error, match):
    engine = LaserEngine(llava_adapter, LaserConfig.preset("laser"))
    with pytest.raises(error, match=match):
        engine.answer_batch(images, questions)


def test_empty_question_is_an_error(llava_adapter, five_samples):
    images, _ = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("laser"))
    with pytest.raises(ValueError, match=r"questions\[0\] is empty"):
        engine.answer(images[0], "   ")
