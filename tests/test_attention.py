"""The two VAQ passes: prefix-cache reuse equals full prefills; `pred.vaq` equals eager attentions."""

import torch
from adapter_checks import eager_rows, reference_vaq
from conftest import random_image

from laser import LaserConfig, LaserEngine
from laser.method.attention import capture_attention
from laser.method.probe import AttentionProbe


def _inputs(adapter):
    images = [random_image(500, 300, 3), random_image(320, 480, 4), random_image(336, 336, 5)]
    questions = ["What is the color ?", "Is there a red box in the image ?", "How many"]
    return (
        adapter.build_inputs(images, questions),
        adapter.build_inputs(images, questions, with_question=False),
    )


def test_prefix_reuse_equals_full_prefill(llava_adapter):
    adapter = llava_adapter
    inputs_q, inputs_0 = _inputs(adapter)
    probe = AttentionProbe(adapter.attention_modules()).install()
    with torch.no_grad():
        reused = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=True)
        full = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=False)
    assert reused.prefix_reused and not full.prefix_reused
    torch.testing.assert_close(reused.a_zero, full.a_zero, atol=1e-5, rtol=0)
    torch.testing.assert_close(reused.a_plus, full.a_plus, atol=1e-5, rtol=0)


def test_no_question_rows_equal_eager(llava_adapter):
    adapter = llava_adapter
    inputs_q, inputs_0 = _inputs(adapter)
    probe = AttentionProbe(adapter.attention_modules()).install()
    with torch.no_grad():
        rows = capture_attention(adapter, probe, inputs_q, inputs_0, prefix_reuse=True)
    torch.testing.assert_close(rows.a_zero, eager_rows(adapter, inputs_0), atol=1e-5, rtol=0)


def test_prediction_vaq_equals_independent_computation(llava_adapter):
    adapter = llava_adapter
    image, question = random_image(480, 360, 9), "What digit is in the blue box ?"
    for top_k in (2, 8):
        engine = LaserEngine(adapter, LaserConfig.preset("laser", **{"vaq.top_heads": top_k}))
        pred = engine.answer(image, question)
        a_plus = eager_rows(adapter, adapter.build_inputs([image], [question]))[0]
        a_zero = eager_rows(adapter, adapter.build_inputs([image], [question], with_question=False))[0]
        expected = reference_vaq(a_plus, a_zero, top_k)
        assert len(pred.vaq) == adapter.num_layers
        torch.testing.assert_close(torch.tensor(pred.vaq), torch.tensor(expected), atol=1e-6, rtol=1e-4)
        assert pred.layer == max(range(len(expected)), key=expected.__getitem__)
