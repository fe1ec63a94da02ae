"""Device placement without a GPU: the model and its layers on stand-in CUDA devices (`stand_in_device`),
where mixing devices raises as on a GPU. Every preset runs end to end and answers exactly as on the CPU,
on one device and with the layers split over two (a device map), and the attention rows come back on
the model's device."""

import pytest
import torch
from conftest import random_image
from laser.adapters import create_adapter
from stand_in_device import OnDevice, place_model, stand_in_devices
from tiny_models import tiny_llava

from laser.method.attention import capture_attention, capture_full
from laser.method.config import LaserConfig, list_presets
from laser.method.engine import LaserEngine

IMAGES = [(120, 90, 1), (90, 130, 2)]
QUESTIONS = ["What is the color ?", "Is there a red box in the image on the left ?"]
LAYOUTS = {"one_gpu": ["cuda:0"], "layers_on_two_gpus": ["cuda:0", "cuda:1"]}


def _adapter():
    model, processor = tiny_llava(image_size=112)
    return create_adapter("llava", model=model, processor=processor)


def _summary(pred) -> tuple:
    return pred.answer, pred.layer, pred.box, pred.path, pred.fallback, pred.masked_cells


def test_stand_in_devices_raise_like_cuda_on_mixed_devices():
    with stand_in_devices():
        a = torch.ones(3).to("cuda:0")
        b = torch.ones(3, device="cuda:1")
        assert isinstance(a, OnDevice) and a.device == torch.device("cuda:0") and b.device == torch.device("cuda:1")
        assert (a * 2).device == a.device and float((a + torch.tensor(1.0)).sum()) == 6.0  # CPU scalars mix
        with pytest.raises(RuntimeError, match="same device"):
            a * torch.ones(3)
        with pytest.raises(RuntimeError, match="same device"):
            torch.stack([a, b])
        assert not isinstance(b.cpu(), OnDevice) and (a.to("cuda:1") + b).device == torch.device("cuda:1")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_attention_rows_come_back_on_the_model_device(layout, monkeypatch):
    adapter = _adapter()
    images = [random_image(w, h, s) for w, h, s in IMAGES]
    inputs_q = adapter.build_inputs(images, QUESTIONS)
    inputs_0 = adapter.build_inputs(images, QUESTIONS, with_question=False)
    reference = capture_attention(adapter, LaserEngine(adapter).probe, inputs_q, inputs_0)
    place_model(adapter, LAYOUTS[layout], monkeypatch)
    probe = LaserEngine(adapter).probe
    with stand_in_devices(), torch.no_grad():
        rows, valid, _ = capture_full(adapter, probe, inputs_q)
        reused = capture_attention(adapter, probe, inputs_q, inputs_0)
    model_device = torch.device("cuda:0")
    assert rows.device == valid.device == model_device
    assert reused.prefix_reused and reused.a_plus.device == reused.a_zero.device == reused.valid.device == model_device
    torch.testing.assert_close(reused.a_plus.cpu(), reference.a_plus, atol=1e-6, rtol=0)
    torch.testing.assert_close(reused.a_zero.cpu(), reference.a_zero, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_preset_runs_on_other_devices_and_answers_as_on_the_cpu(layout, monkeypatch):
    adapter = _adapter()
    images = [random_image(w, h, s) for w, h, s in IMAGES]
    presets = list_presets()
    expected = {}
    for preset in presets:
        engine = LaserEngine(adapter, LaserConfig.preset(preset))
        expected[preset] = [_summary(p) for p in engine.answer_batch(images, QUESTIONS, seeds=[1, 2])]
        engine.probe.remove()
    place_model(adapter, LAYOUTS[layout], monkeypatch)
    with stand_in_devices():
        for preset in presets:
            engine = LaserEngine(adapter, LaserConfig.preset(preset))
            got = [_summary(p) for p in engine.answer_batch(images, QUESTIONS, seeds=[1, 2])]
            engine.probe.remove()
            assert got == expected[preset], preset
