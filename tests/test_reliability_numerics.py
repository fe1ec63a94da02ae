"""Reliability, numerical faults: NaN/inf in attention or logits (float16 overflow, injected with
monkeypatching and forward hooks on a tiny model) falls back to vanilla for that sample and says why in
the record's `fallback`; if even vanilla decoding has no finite logits the sample is an error record
(never a silent token 0)."""

import pytest
import torch
from conftest import random_image
from tiny_models import tiny_llava

from laser.method import engine as engine_module
from laser.method.config import LaserConfig
from laser.method.engine import LaserEngine
from laser.run.lightning import LaserModule

QUESTION = "What is the color ?"


@pytest.fixture(scope="module")
def adapter():
    from laser.adapters import create_adapter

    model, processor = tiny_llava(image_size=112)
    return create_adapter("llava", model=model, processor=processor)


@pytest.fixture
def make_module(adapter):
    engines = []

    def make(method: str = "laser", **overrides) -> LaserModule:
        config = LaserConfig.preset(method, **{"decode.max_new_tokens": 3, **overrides})
        engine = LaserEngine(adapter, config)
        engines.append(engine)
        return LaserModule(model="tiny", method=config, engine=engine)

    yield make
    for engine in engines:
        engine.probe.remove()


@pytest.fixture
def logits_hook(adapter):
    """Install `fn(logits) -> logits | None` on the LM head for one test."""
    handles = []

    def install(fn):
        head = adapter.model.get_output_embeddings()
        handles.append(head.register_forward_hook(lambda module, args, output: fn(output)))

    yield install
    for handle in handles:
        handle.remove()


def samples(n: int = 1) -> list[dict]:
    return [
        {"sample_id": f"s{i}", "question": QUESTION, "answers": ["red"], "image": random_image(90 + 20 * i, 70, seed=i), "error": None}
        for i in range(n)
    ]


def float16_overflow(logits: torch.Tensor) -> torch.Tensor:
    return (logits.float() * 1e6).half().float()  # |x| > 65504 -> +-inf, as a float16 LM head overflows


def test_non_finite_attention_falls_back_to_vanilla_for_that_sample_only(make_module, monkeypatch):
    capture = engine_module.capture_attention

    def poisoned(*args, **kwargs):
        rows = capture(*args, **kwargs)
        rows.a_plus[0, 1] = float("nan")
        return rows

    monkeypatch.setattr(engine_module, "capture_attention", poisoned)
    first, second = make_module().predict_step(samples(2))
    assert first["error"] is None and first["path"] == "vanilla" and isinstance(first["prediction"], str)
    assert first["fallback"] == "non-finite attention; answered with vanilla decoding"
    assert first["layer"] is None and first["box"] is None
    assert second["error"] is None and second["fallback"] is None and second["path"] != "vanilla"


def test_overflowing_logits_on_the_laser_path_fall_back_to_vanilla(make_module, logits_hook, monkeypatch):
    sample = samples(1)
    vanilla = make_module("vanilla").predict_step(sample)[0]
    module = make_module("laser")
    decoded = []  # the logits overflow until LASER's own decoding is done; the vanilla retry's do not
    generate = engine_module.generate

    def counted(*args, **kwargs):
        try:
            return generate(*args, **kwargs)
        finally:
            decoded.append(True)

    monkeypatch.setattr(engine_module, "generate", counted)
    logits_hook(lambda out: None if decoded else float16_overflow(out))
    record = module.predict_step(sample)[0]
    assert record["error"] is None and record["path"] == "vanilla"
    assert record["fallback"].startswith("non-finite logits (NaN/inf) at step 0")
    assert record["fallback"].endswith("answered with vanilla decoding")
    assert record["prediction"] == vanilla["prediction"]  # the same answer a vanilla run gives
    assert module.engine.config.localize  # the method is restored after the retry


def test_nan_in_the_negative_stream_falls_back_to_the_positive_stream(make_module, logits_hook):
    def negative_nan(out):
        if out.shape[0] == 2:  # contrastive decoding of one sample: rows [positive, negative]
            out = out.clone()
            out[1] = float("nan")
            return out
        return None

    logits_hook(negative_nan)
    record = make_module("laser", **{"decode.mode": "contrastive"}).predict_step(samples(1))[0]
    assert record["error"] is None and record["path"] == "contrastive"
    assert record["fallback"] == "non-finite contrastive scores at step 0"


@pytest.mark.parametrize("do_sample", [False, True])
def test_nan_logits_with_vanilla_decoding_is_an_error_not_token_zero(make_module, logits_hook, do_sample):
    logits_hook(lambda out: torch.full_like(out, float("nan")))
    first, second = make_module("vanilla", **{"decode.do_sample": do_sample}).predict_step(samples(2))
    for record in (first, second):
        assert record["prediction"] is None
        assert record["error"].startswith("NonFiniteLogits: non-finite logits (NaN/inf) at step 0")


def test_nan_logits_everywhere_on_the_laser_path_is_an_error_after_the_vanilla_retry(make_module, logits_hook):
    logits_hook(lambda out: torch.full_like(out, float("nan")))
    record = make_module("laser").predict_step(samples(1))[0]
    assert record["prediction"] is None
    assert "with vanilla decoding" in record["error"] and record["error"].startswith("NonFiniteLogits")


def test_logits_turning_nan_mid_answer_cut_the_answer_and_report_the_step(make_module, logits_hook):
    calls = []

    def nan_from_third_step(out):
        calls.append(1)
        return torch.full_like(out, float("nan")) if len(calls) >= 3 else None

    logits_hook(nan_from_third_step)
    record = make_module("vanilla", **{"decode.max_new_tokens": 5}).predict_step(samples(1))[0]
    assert record["prediction"] is None and "at step 2" in record["error"]
