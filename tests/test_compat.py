"""`laser.compat`: each shim over a private transformers / open_clip name works on the installed versions,
and no other module of `laser/` or `adapters/` uses those names."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
)

from laser import compat
from laser.method.probe import register_probe_kernel

ROOT = Path(__file__).resolve().parents[1]


def test_attention_kernel_reads_sets_and_restores_the_language_configs_kernel(llava):
    model, _ = llava
    config = model.config.text_config
    original = compat.attention_kernel(config)  # the session's model may already be routed to a probe
    kernel = original.removeprefix("laser_probe_")
    assert kernel in ("sdpa", "eager")
    probe_name = register_probe_kernel(kernel)
    try:
        compat.set_attention_kernel(config, probe_name)
        assert compat.attention_kernel(config) == probe_name
        assert compat.attention_kernel(model.config.vision_config) != probe_name  # the vision tower keeps its own
        with compat.attention_kernel_as(config, kernel):
            assert compat.attention_kernel(config) == kernel
        assert compat.attention_kernel(config) == probe_name
        try:
            with compat.attention_kernel_as(config, "eager"):
                raise KeyError("inside")
        except KeyError:
            pass
        assert compat.attention_kernel(config) == probe_name  # restored on an error too
    finally:
        compat.set_attention_kernel(config, original)
    assert compat.attention_kernel(config) == original


def test_mask_functions_are_looked_up_where_the_mask_builders_look():
    assert compat.mask_function_registered("sdpa") and compat.mask_function_registered("eager")
    assert not compat.mask_function_registered("no_such_kernel")
    assert compat.registered_mask_function("no_such_kernel") is None
    name = register_probe_kernel("sdpa")
    assert compat.mask_function_registered(name)
    assert compat.registered_mask_function(name) is compat.registered_mask_function("sdpa")


def test_logits_processors_are_the_ones_generate_builds(llava):
    model, _ = llava
    assert compat.is_generation_model(model) and not compat.is_generation_model(model.model)
    config = GenerationConfig(do_sample=True, top_k=3, repetition_penalty=1.3, min_length=3)
    ids, mask = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)
    eos = torch.tensor([1])
    processors = compat.logits_processors_of(model, config, ids, mask, eos)
    kinds = {type(p) for p in processors}
    assert {RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, MinLengthLogitsProcessor} <= kinds
    assert getattr(config, "_eos_token_tensor", None) is None  # the caller's config is not modified
    scores = processors(ids, torch.zeros(1, 8))
    assert scores[0, 1] == float("-inf")  # min length: the eos given is masked before 3 tokens


def test_open_clip_vision_tower_builds_the_tower_alone():
    import open_clip

    config = open_clip.get_model_config("ViT-B-32")
    config["vision_cfg"].update(image_size=32, patch_size=8, width=32, head_width=16, layers=1)
    tower = compat.open_clip_vision_tower(config)
    assert tuple(tower.grid_size) == (4, 4)
    assert tower(torch.zeros(1, 3, 32, 32)).shape == (1, config["embed_dim"])


def test_no_module_but_compat_uses_the_private_names():
    """The private transformers / open_clip names appear in laser/compat.py only (code and comments)."""
    pattern = re.compile("|".join(re.escape(name) + r"\b" for name in compat.PRIVATE_NAMES))
    sources = [p for folder in ("laser", "adapters") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert ROOT / "laser" / "compat.py" in sources
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        if path != ROOT / "laser" / "compat.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "use laser.compat instead:\n" + "\n".join(found)
    compat_source = (ROOT / "laser" / "compat.py").read_text(encoding="utf-8")
    assert all(name in compat_source for name in compat.PRIVATE_NAMES)


def test_the_private_name_check_sees_a_use():
    pattern = re.compile("|".join(re.escape(name) + r"\b" for name in compat.PRIVATE_NAMES))
    assert pattern.search("config._attn_implementation = 'eager'")
    assert pattern.search("model._get_logits_processor(")
    assert not pattern.search("compat.set_attention_kernel(config, name)")
