"""The probe under every transformers attention implementation: each hands its kernel a different mask
(sdpa a 4-D bool mask or None, eager an additive one, flash a 2-D padding mask or None with the window
as a kwarg, flex a BlockMask), and on a left-padded batch the probe's rows must still equal eager
`output_attentions`, with and without a sliding window; the flash kernel loader must see its own name."""

import pytest
import torch
from adapter_checks import eager_rows
from conftest import random_image
from kernel_stand_ins import flash_attention, flex_attention_uncompiled
from laser.adapters import create_adapter
from tiny_models import tiny_llava

from laser.method.attention import capture_full
from laser.method.probe import AttentionProbe

IMPLEMENTATIONS = ["sdpa", "eager", "flash_attention_2", "flex_attention"]
WINDOW = 24  # shorter than the prompts (64 visual tokens + text)


@pytest.fixture(scope="module")
def models():
    return {
        "causal": tiny_llava(image_size=112),
        "window": tiny_llava(image_size=112, sliding_window=WINDOW, seed=1),
    }


def _mask_format(mask) -> str:
    if mask is None:
        return "None"
    if type(mask).__name__ == "BlockMask":
        return "BlockMask"
    kind = "bool" if mask.dtype == torch.bool else "additive"
    return f"{mask.dim()}-D {kind}"


EXPECTED_FORMATS = {
    ("sdpa", "padded"): {"4-D bool"},
    ("sdpa", "single"): {"None", "4-D bool"},  # None where sdpa's is_causal covers the mask
    ("eager", "padded"): {"4-D additive"},
    ("eager", "single"): {"4-D additive"},
    ("flash_attention_2", "padded"): {"2-D bool"},
    ("flash_attention_2", "single"): {"None"},
    ("flex_attention", "padded"): {"BlockMask"},
    ("flex_attention", "single"): {"BlockMask"},
}


@pytest.mark.parametrize("batch", ["padded", "single"])
@pytest.mark.parametrize("kind", ["causal", "window"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_probe_rows_equal_eager_under_every_kernel_and_mask_format(models, implementation, kind, batch, monkeypatch):
    model, processor = models[kind]
    adapter = create_adapter("llava", model=model, processor=processor)
    spy = flash_attention(monkeypatch) if implementation.startswith("flash") else None
    if implementation == "flex_attention":
        flex_attention_uncompiled(monkeypatch)
    monkeypatch.setattr(model.config.text_config, "_attn_implementation", implementation)
    if batch == "padded":  # different prompt lengths: the shorter one is left-padded
        images = [random_image(120, 90, 1), random_image(90, 130, 2)]
        questions = ["What is the color ?", "Is there a red box in the image on the left ?"]
    else:
        images, questions = [random_image(120, 90, 3)], ["What digit is in the blue box ?"]
    inputs = adapter.build_inputs(images, questions)
    assert (inputs["attention_mask"] == 0).any() == (batch == "padded")

    formats = []
    hook = adapter.attention_modules()[0].register_forward_pre_hook(
        lambda module, args, kwargs: formats.append(_mask_format(kwargs.get("attention_mask"))), with_kwargs=True
    )
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            rows, valid, layouts = capture_full(adapter, probe, inputs)
    finally:
        probe.remove()
        hook.remove()
    assert set(formats) <= EXPECTED_FORMATS[implementation, batch], formats

    reference = eager_rows(adapter, inputs)
    assert rows.shape == reference.shape
    torch.testing.assert_close(rows, reference, atol=1e-5, rtol=0)
    if kind == "window":  # the window really cut visual tokens off the last row
        assert (reference[:, :, :, 0] == 0).all() and (reference[0, :, :, -1] > 0).all()
    if spy is not None:
        assert spy.names and set(spy.names) == {"flash_attention_2"}
    assert model.config.text_config._attn_implementation == implementation  # the probe left no trace


def test_flash_kernel_sees_its_own_name_while_the_probe_is_installed(models, monkeypatch):
    """Every preset runs through the flash path: the name transformers passes to the kernel loader is
    the real one, not the probe's routing name."""
    from laser.method.config import LaserConfig
    from laser.method.engine import LaserEngine

    model, processor = models["causal"]
    adapter = create_adapter("llava", model=model, processor=processor)
    spy = flash_attention(monkeypatch)
    monkeypatch.setattr(model.config.text_config, "_attn_implementation", "flash_attention_2")
    images = [random_image(120, 90, 1), random_image(90, 130, 2)]
    questions = ["What is the color ?", "Is there a red box in the image on the left ?"]
    for preset in ("vanilla", "laser"):
        engine = LaserEngine(adapter, LaserConfig.preset(preset))
        try:
            preds = engine.answer_batch(images, questions)
        finally:
            engine.probe.remove()
        assert len(preds) == 2
    assert spy.names == ["flash_attention_2"]  # loaded once, under its own name


def test_last_row_mask_from_padding_and_window():
    from laser.method.probe import last_row_mask

    padding = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert last_row_mask(None, 2, 6) is None
    assert last_row_mask(padding, 2, 6).tolist() == padding.bool().tolist()
    windowed = last_row_mask(padding, 2, 6, window=3)  # the last query (index 5) sees keys 3, 4, 5
    assert windowed.tolist() == [[False, False, False, True, True, True]] * 2
    assert last_row_mask(padding, 2, 4).tolist() == [[True] * 4, [True] * 4]  # a cache holding the last 4 keys
    with pytest.raises(ValueError, match="covers 6 positions, the layer sees 8 keys"):
        last_row_mask(padding, 2, 8)
