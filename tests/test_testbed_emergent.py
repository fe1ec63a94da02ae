"""The shipped emergent-grounding testbed checkpoint (`model=testbed_emergent`): present, small, deep,
per-patch visual tokens, and it reads large digits of the shipped split."""

import pytest
import torch
from laser.adapters import create_adapter
from PIL import Image
from testbed.model import prompt

from laser.paths import assets_dir
from laser.testbed.split import load_split

MODEL_DIR = assets_dir() / "testbed_emergent" / "model"
SPLIT = assets_dir() / "testbed" / "eval.jsonl"
MAX_BYTES = 20 * 2**20
# the bar: vanilla reads large targets at >= 80% (first answer token, every large-target reading
# question of the shipped split)
LARGE_READING_MIN = 0.8


@pytest.fixture(scope="module")
def adapter():
    assert (MODEL_DIR / "model.safetensors").is_file(), f"missing shipped checkpoint {MODEL_DIR}"
    torch.manual_seed(0)
    return create_adapter(str(MODEL_DIR))


def test_checkpoint_size_and_depth(adapter):
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= MAX_BYTES
    assert adapter.num_layers == adapter.model.config.text_config.num_hidden_layers >= 8


def test_visual_tokens_see_only_their_patch(adapter):
    """Changing one 8x8 patch changes exactly one projected visual token."""
    model, proc = adapter.model, adapter.processor
    captured = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        inputs = proc(text=[prompt("What digit is in the red box?")], images=[Image.new("RGB", (64, 64), (90, 140, 30))],
                      return_tensors="pt")
        with torch.no_grad():
            model(**inputs)
            pixels = inputs["pixel_values"].clone()
            pixels[:, :, 16:24, 40:48] = pixels[:, :, 16:24, 40:48].flip(-1) + 0.5  # patch (row 2, col 5)
            inputs["pixel_values"] = pixels
            model(**inputs)
    finally:
        hook.remove()
    before, after = captured[0].reshape(-1, captured[0].shape[-1]), captured[1].reshape(-1, captured[1].shape[-1])
    changed = ((before - after).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
    assert changed == [2 * 8 + 5]


@pytest.mark.xfail(strict=True, reason="the shipped checkpoint does not use the image: grounding did not emerge "
                   "from the answer loss in the recipe's 4,000 steps (README, 'Grounding nobody taught')")
def test_reads_large_digits_of_the_shipped_split(adapter):
    model, proc = adapter.model, adapter.processor
    recs = [r for r in load_split(SPLIT) if r["meta"]["family"] == "reading" and r["meta"]["size"] == "large"]
    assert len(recs) >= 50
    images = [Image.open(SPLIT.parent / r["image"]).convert("RGB") for r in recs]
    inputs = proc(text=[prompt(r["question"]) for r in recs], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        first = model(**inputs).logits[:, -1].argmax(-1)
    predicted = proc.tokenizer.convert_ids_to_tokens(first.tolist())
    accuracy = sum(p == r["answers"][0] for p, r in zip(predicted, recs)) / len(recs)
    assert accuracy >= LARGE_READING_MIN, f"{accuracy:.2f}"
