"""Layer 0 cannot localise what a question asks (docs/method.md, VAQ), so VAQ leaves it out by default."""

import pytest
import torch
from conftest import random_image

from laser.method.attention import capture_attention
from laser.method.config import LaserConfig
from laser.method.engine import LaserEngine
from laser.method.vaq import default_candidates, select_layer

# two questions of the same token length that ask about different things
SAME_LENGTH = ("What digit is in the red box ?", "Is the left side bright or dark ?")


@pytest.fixture(scope="module")
def rows(llava_adapter):
    engine = LaserEngine(llava_adapter, LaserConfig.preset("laser"))
    image = random_image(336, 336, seed=3)
    inputs = llava_adapter.build_inputs([image, image], list(SAME_LENGTH))
    assert bool(inputs["attention_mask"].all()), "the two prompts must have the same token length"
    return capture_attention(llava_adapter, engine.probe, inputs, None, prefix_reuse=False).a_plus


def _spread_of_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest relative spread over visual tokens of a / b, per head ([heads, n_visual] rows)."""
    ratio = a.detach().double() / b.detach().double()
    return float((ratio.std(dim=-1) / ratio.mean(dim=-1)).max())


def test_layer_zero_rows_of_same_length_questions_are_proportional(rows):
    # a+[0] of question 1 is a per-head constant times a+[0] of question 2: the question moves only the
    # softmax mass the visual tokens get, never which visual token gets it
    assert _spread_of_ratio(rows[0, 0], rows[1, 0]) < 1e-6  # 3e-8 measured: float rounding
    # from layer 1 on, the last token has read its question and the rows differ in shape
    assert min(_spread_of_ratio(rows[0, layer], rows[1, layer]) for layer in range(1, rows.shape[1])) > 1e-4  # >= 3.6e-4


def test_default_candidates_leave_out_layer_zero():
    vaq = torch.tensor([[9.0, 1.0, 2.0, 0.5]])
    assert default_candidates(4) == [1, 2, 3]
    assert default_candidates(1) == [0]
    assert select_layer(vaq).tolist() == [2]
    assert select_layer(vaq, [0, 1, 2, 3]).tolist() == [0]  # vaq.layers can still include it
    assert select_layer(torch.tensor([[3.0]])).tolist() == [0]


def test_engine_never_picks_layer_zero_by_default_but_can(llava_adapter, five_samples):
    images, questions = five_samples
    default = LaserEngine(llava_adapter, LaserConfig.preset("laser")).answer_batch(images, questions)
    assert all(p.layer != 0 for p in default)
    every = LaserConfig.preset("laser", **{"vaq.layers": list(range(llava_adapter.num_layers))})
    chosen = LaserEngine(llava_adapter, every).answer_batch(images, questions)
    for p in chosen:
        assert p.layer == max(range(len(p.vaq)), key=lambda layer: p.vaq[layer])
