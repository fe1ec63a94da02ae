"""The attention probe equals eager `output_attentions` and keeps only layers x heads x n_visual."""

import torch
from adapter_checks import eager_rows
from conftest import random_image

from laser.method.attention import capture_full, model_tensors
from laser.method.probe import AttentionProbe, last_row_attention


def test_probe_equals_eager_attentions_every_layer_and_head(llava_adapter):
    adapter = llava_adapter
    images = [random_image(500, 300, 1), random_image(300, 420, 2)]
    inputs = adapter.build_inputs(images, ["What is the color ?", "Is there a red box in the image ?"])
    probe = AttentionProbe(adapter.attention_modules()).install()
    with torch.no_grad():
        rows, valid, layouts = capture_full(adapter, probe, inputs)
    reference = eager_rows(adapter, inputs)
    batch, layers, heads = 2, adapter.num_layers, adapter.num_heads
    assert rows.shape == (batch, layers, heads, layouts[0].n_visual) == reference.shape
    torch.testing.assert_close(rows, reference, atol=1e-5, rtol=0)
    assert valid.all()


def test_probe_keeps_only_layers_heads_visual(llava_adapter):
    adapter = llava_adapter
    inputs = adapter.build_inputs([random_image(336, 336)], ["What is the color ?"])
    probe = AttentionProbe(adapter.attention_modules()).install()
    with torch.no_grad():
        rows, _, layouts = capture_full(adapter, probe, inputs)
    seq_len = inputs["input_ids"].shape[1]
    assert rows.numel() == adapter.num_layers * adapter.num_heads * layouts[0].n_visual
    assert rows.numel() < adapter.num_layers * adapter.num_heads * seq_len * seq_len / 100


def test_probe_does_not_change_model_outputs(llava_adapter):
    adapter = llava_adapter
    inputs = adapter.build_inputs([random_image(400, 300)], ["What is the color ?"])
    model_inputs = adapter.prepare_model_inputs(model_tensors(inputs))
    probe = AttentionProbe(adapter.attention_modules()).install()
    with torch.no_grad():
        probe.remove()
        plain = adapter.model(**model_inputs).logits
        probe.install()
        layouts = [adapter.visual_layout(inputs, 0)]
        with probe.capture(layouts[0].positions[None], model_inputs["attention_mask"]):
            probed = adapter.model(**model_inputs).logits
    assert torch.equal(plain, probed)


def test_probe_is_installed_only_on_language_model(llava):
    model, processor = llava
    from laser.adapters import create_adapter

    adapter = create_adapter("llava", model=model, processor=processor)
    AttentionProbe(adapter.attention_modules()).install()
    assert model.config.text_config._attn_implementation.startswith("laser_probe_")
    assert not model.config.vision_config._attn_implementation.startswith("laser_probe_")


def test_last_row_attention_gqa_mask_and_softcap_match_reference():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 8)
    k = torch.randn(2, 2, 7, 8)
    mask = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    mask[0, :, :, :3] = False  # left padding of sample 0
    probs = last_row_attention(q, k, mask, 0.3, softcap=2.0)
    k_rep = k.repeat_interleave(2, dim=1)
    scores = torch.tanh((q[:, :, -1:] @ k_rep.transpose(-1, -2)) * 0.3 / 2.0) * 2.0
    scores = scores.masked_fill(~mask[:, :, -1:], float("-inf"))
    expected = torch.softmax(scores, -1)[:, :, 0]
    torch.testing.assert_close(probs, expected)
    assert probs[0, :, :3].abs().max() == 0
