"""The shipped testbed checkpoint loads offline as a real LLaVA and speaks the adapter's prompt."""

import json
import os

import torch
from testbed.model import answer_ids, build_config, build_processor, build_tokenizer, prompt, prompt_ids

from laser.paths import assets_dir
from laser.testbed.scenes import make_scene, render_scene
from laser.testbed.split import load_split

MODEL_DIR = assets_dir() / "testbed" / "model"
SPLIT = assets_dir() / "testbed" / "eval.jsonl"


def test_prompt_matches_adapter_format():
    assert prompt("Q?") == "USER: <image>\nQ?\nAnswer the question using a single word or phrase. ASSISTANT:"
    assert prompt(None) == "USER: <image>\nAnswer the question using a single word or phrase. ASSISTANT:"


def test_vocabulary_covers_split_and_prompts():
    tok = build_tokenizer()
    assert tok.padding_side == "left"
    assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    texts = [prompt(None)] + [prompt(r["question"]) + " " + r["answers"][0] for r in load_split(SPLIT)]
    extra = ["What color is the box with the digit 7?", "How many boxes are there?", "Where is the red box?",
             "left right top bottom red green blue yellow purple orange"]
    for t in texts + extra:
        assert tok.unk_token_id not in tok(t)["input_ids"], t
    assert answer_ids(tok, "7")[-1] == tok.eos_token_id and len(answer_ids(tok, "7")) == 2


def test_shipped_tokenizers_know_vicrops_generic_prompt():
    from transformers import AutoTokenizer

    from laser.method.config import LaserConfig
    from laser.paths import assets_dir

    generic = LaserConfig.preset("vicrop").vaq.generic_prompt
    for model in ("testbed", "testbed_emergent"):
        tok = AutoTokenizer.from_pretrained(assets_dir() / model / "model")
        ids = tok(prompt(generic))["input_ids"]
        assert tok.unk_token_id not in ids, (model, tok.convert_ids_to_tokens(ids))


def test_processor_expands_image_token():
    tok = build_tokenizer()
    proc = build_processor(tok)
    im = render_scene(make_scene(1))
    q = "What digit is in the box left of the red box?"
    b = proc(text=[prompt(q)], images=[im], return_tensors="pt")
    assert b["input_ids"][0].tolist() == prompt_ids(tok, q)
    assert (b["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum() == 64
    assert tuple(b["pixel_values"].shape) == (1, 3, 64, 64)


def test_checkpoint_loads_offline_and_generates():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert (MODEL_DIR / name).is_file(), f"the shipped testbed checkpoint is missing {MODEL_DIR / name}"
    assert os.path.getsize(MODEL_DIR / "model.safetensors") <= 30 * 2**20
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    proc = AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)
    assert proc.tokenizer.padding_side == "left"
    im = render_scene(make_scene(2))
    inp = proc(text=[prompt("Is there a red box?"), prompt(None)], images=[im, im], return_tensors="pt", padding=True)
    assert (inp["input_ids"] == model.config.image_token_id).sum() == 128
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=2, do_sample=False)
        fwd = model(**inp, use_cache=True)
    assert out.shape[1] == inp["input_ids"].shape[1] + 2
    assert fwd.logits.shape[:2] == inp["input_ids"].shape


def test_checkpoint_was_built_by_this_code():
    """The shipped tokenizer and config are what `build_tokenizer` / `build_config` make now, so the
    training recipe (tools/train_testbed.py) starts from the shipped architecture."""
    shipped = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    built = json.loads(build_tokenizer().backend_tokenizer.to_str())
    assert {k: v for k, v in shipped.items() if k != "padding"} == {k: v for k, v in built.items() if k != "padding"}
    from transformers import LlavaConfig

    volatile = ("transformers_version", "dtype", "torch_dtype", "_name_or_path", "architectures")

    def settings(config):
        flat = config.to_dict()
        flat = {**flat, **{f"{s}.{k}": v for s in ("vision_config", "text_config") for k, v in flat.pop(s).items()}}
        return {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in volatile}

    assert settings(LlavaConfig.from_pretrained(MODEL_DIR)) == settings(build_config(build_tokenizer()))
