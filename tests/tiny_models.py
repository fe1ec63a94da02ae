"""Tiny random-weight models of real Hugging Face LVLM classes, with processors built offline.

One builder per registered adapter (`TINY_BUILDERS[name]() -> (model, processor)`); tests iterate
the registry over it, timm-style.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_TOOLS = str(Path(__file__).resolve().parents[1] / "tools")
if _TOOLS not in sys.path:  # conftest adds it; scripts importing this module directly may not
    sys.path.insert(0, _TOOLS)

from tiny_lvlm import llava_config, llava_processor, word_tokenizer  # noqa: E402  (tools/tiny_lvlm.py)

__all__ = ["TINY_BUILDERS", "TINY_VARIANTS", "tiny_llava", "word_tokenizer"]


def tiny_llava(
    *,
    image_size: int = 336,
    patch_size: int = 14,
    vision_layers: int = 2,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    hidden: int = 64,
    do_pad: bool = False,
    sliding_window: int | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A random `LlavaForConditionalGeneration` with a CLIP tower and a Llama LM, in float32 (a Mistral
    LM attending over the last `sliding_window` tokens when that is set).

    The LM reads the second-to-last vision layer (`vision_feature_layer=-2`, as LLaVA-1.5), so
    `vision_layers=0` (built as one layer) hands it the patch embeddings: each visual token sees only
    its own patch (the locality tests)."""
    from transformers import LlavaForConditionalGeneration

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    config = llava_config(
        tokenizer, image_size=image_size, patch_size=patch_size, vision_layers=max(vision_layers, 1),
        text_hidden=hidden, text_layers=text_layers, heads=heads, kv_heads=kv_heads,
    )
    if sliding_window is not None:
        config.text_config = _mistral(config.text_config, sliding_window)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = None
    if do_pad:
        from transformers.models.llava.image_processing_llava import LlavaImageProcessor

        image_processor = LlavaImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            do_pad=True,
        )
    return model, llava_processor(tokenizer, image_size, patch_size, image_processor)


def _mistral(llama: Any, sliding_window: int) -> Any:
    """The Llama text config as a Mistral one (the same sizes) with a sliding window."""
    from transformers import MistralConfig

    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")
    return MistralConfig(sliding_window=sliding_window, **{k: getattr(llama, k) for k in sizes})


def _lazy(module: str, builder: str) -> Callable[..., tuple[Any, Any]]:
    """`module.builder`, imported on first call (the family modules import many model classes)."""

    def build(**kwargs: Any) -> tuple[Any, Any]:
        return getattr(importlib.import_module(module), builder)(**kwargs)

    build.__name__ = builder
    return build


TINY_BUILDERS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "llava": functools.partial(tiny_llava, image_size=112),  # 8x8 visual tokens (the 336 px default: 24x24)
    # tiny_families_a: LLaVA-NeXT, OneVision, Idefics3, SmolVLM, Gemma 3, PaliGemma
    **{name: _lazy("tiny_families_a", f"tiny_{name}") for name in (
        "llava_next", "llava_onevision", "idefics3", "smolvlm", "gemma3", "paligemma",
    )},
    # tiny_families_b: Qwen-VL, InternVL, composite, InstructBLIP
    **{name: _lazy("tiny_families_b", f"tiny_{name}") for name in (
        "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "composite", "instructblip",
    )},
}
"""Registered adapter name -> `builder(vision_layers=..., seed=...) -> (model, processor)`;
`vision_layers=0` cuts the vision tower to its local part (each visual token sees only its own patch)."""

TINY_VARIANTS: dict[str, tuple[str, Callable[..., tuple[Any, Any]]]] = {
    "composite_open_clip": ("composite", _lazy("tiny_families_b", "tiny_composite_open_clip")),
}
"""Second fixtures of a family, not registered names: fixture name -> (adapter name, builder)."""
