"""`vanilla` is the model's own decoding: it equals `model.generate(**inputs)` token for token under the
model's generation config (repetition penalty included), greedy and seeded sampling, on three families."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_image
from laser.adapters import create_adapter
from tiny_models import TINY_BUILDERS

from laser import LaserConfig, LaserEngine
from laser.method.attention import model_tensors

NEW_TOKENS = 8
FAMILIES = ["llava", "qwen2_vl", "internvl"]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    model, processor = TINY_BUILDERS[request.param]()
    return create_adapter(request.param, model=model, processor=processor)


def _generate(adapter, image, question, seed: int) -> list[int]:
    """`model.generate(**inputs)` with the global generator seeded, cut at the first EOS."""
    inputs = model_tensors(adapter.build_inputs([image], [question]))
    torch.manual_seed(seed)
    out = adapter.model.generate(**inputs, max_new_tokens=NEW_TOKENS)[0, inputs["input_ids"].shape[1] :].tolist()
    eos = set(adapter.eos_token_ids())
    return out[: next((i for i, t in enumerate(out) if t in eos), len(out))]


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_vanilla_equals_model_generate(adapter, sampling):
    image, question = random_image(300, 200, seed=1), "How many"
    saved = adapter.model.generation_config
    config = adapter.model.generation_config = copy.deepcopy(saved)
    config.repetition_penalty = 3.0  # large: the tiny models repeat one token otherwise
    config.do_sample, config.top_k, config.temperature = sampling, 20, 0.7 if sampling else 1.0
    try:
        engine = LaserEngine(adapter, LaserConfig.preset("vanilla", **{"decode.max_new_tokens": NEW_TOKENS}))
        for seed in (0, 1, 2) if sampling else (0,):
            expected = _generate(adapter, image, question, seed)
            assert engine.answer(image, question, seed=seed).token_ids == expected, f"seed {seed}"
    finally:
        adapter.model.generation_config = saved
