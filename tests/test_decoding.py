"""VAT scores, the adaptive plausibility cut and token selection, by hand."""

import math

import torch

from laser.method.config import DecodeConfig
from laser.method.decoding import (
    generation_config,
    logits_processors,
    plausibility_cut,
    select_tokens,
    vat_scores,
)


def test_vat_scores_equal_one_plus_alpha_zpos_minus_alpha_zneg():
    z_pos = torch.tensor([[2.0, 1.0, -1.0]])
    z_neg = torch.tensor([[1.0, 3.0, -1.0]])
    for alpha in (0.0, 0.5, 1.0, 2.5):
        expected = (1 + alpha) * z_pos - alpha * z_neg
        torch.testing.assert_close(vat_scores(z_pos, z_neg, alpha), expected)
    # alpha = 1: [3, -1, -1]; the token the negative view supports loses
    assert vat_scores(z_pos, z_neg, 1.0).tolist() == [[3.0, -1.0, -1.0]]


def test_plausibility_cut_removes_tokens_below_beta_max_p():
    z_pos = torch.log(torch.tensor([[0.6, 0.3, 0.07, 0.03]]))
    scores = torch.tensor([[0.0, 1.0, 5.0, 9.0]])
    cut = plausibility_cut(scores, z_pos, beta=0.1)  # threshold 0.06: keeps 0.6, 0.3, 0.07
    assert cut[0, :3].tolist() == [0.0, 1.0, 5.0] and math.isinf(cut[0, 3])
    cut = plausibility_cut(scores, z_pos, beta=0.4)  # threshold 0.24: keeps 0.6 and 0.3
    assert cut[0].isinf().tolist() == [False, False, True, True]
    assert torch.equal(plausibility_cut(scores, z_pos, beta=0.0), scores)


def test_contrastive_choice_can_differ_from_greedy_positive():
    z_pos = torch.log(torch.tensor([[0.5, 0.45, 0.05]]))
    z_neg = torch.log(torch.tensor([[0.9, 0.05, 0.05]]))  # the negative view also likes token 0
    scores = plausibility_cut(vat_scores(z_pos, z_neg, 1.0), z_pos, 0.1)
    assert int(select_tokens(z_pos, do_sample=False)) == 0
    assert int(select_tokens(scores, do_sample=False)) == 1


def test_sampling_is_reproducible_per_generator_and_respects_top_k(llava):
    """Sampling goes through transformers' warpers built from the generation config (`decode.top_k`
    set over the model's config): every draw is among the top 3 and each generator's draws repeat."""
    model, _ = llava
    config = generation_config(model, DecodeConfig(do_sample=True, top_k=3))
    ids, mask = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    processors = logits_processors(model, config, ids, mask, torch.tensor([3]))
    scores = torch.zeros(2, 50)
    scores[:, :3] = 5.0
    scores[:, 3:6] = 4.9  # without top-k these would be drawn about half the time
    draws = [
        select_tokens(processors(ids, scores.clone()), True, [torch.Generator().manual_seed(s) for s in (1, 2)])
        for _ in range(20)
    ]
    assert all((d < 3).all() for d in draws)
    again = select_tokens(processors(ids, scores.clone()), True, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(draws[0], again)


def test_adapter_forward_adds_positions_from_the_mask_it_is_given(llava_adapter):
    """`adapter.forward` on a cache continuation: past = mask width - chunk; positions come from the
    inputs' mask or, when the inputs carry none (an unpadded decoding step), from `mask`; the logits are
    those of the plain model call with `position_ids` written out."""
    from conftest import random_image

    from laser.compat import cache_kwarg, output_cache
    from laser.method.attention import model_tensors

    adapter = llava_adapter
    inputs = adapter.prepare_model_inputs(model_tensors(adapter.build_inputs([random_image(336, 336)], ["What is it ?"])))
    with torch.no_grad():
        first = adapter.forward(inputs, use_cache=True)
        mask = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(1, 1)], dim=1)
        token = first.logits[:, -1].argmax(-1, keepdim=True)
        step = adapter.forward({"input_ids": token}, output_cache(first), mask, use_cache=True).logits
        first = adapter.model(**inputs, position_ids=adapter.position_ids(inputs["attention_mask"]), use_cache=True)
        expected = adapter.model(
            input_ids=token, position_ids=torch.tensor([[mask.shape[1] - 1]]),
            use_cache=True, **{cache_kwarg(adapter.model): output_cache(first)},
        ).logits
    torch.testing.assert_close(step, expected, atol=0, rtol=0)
