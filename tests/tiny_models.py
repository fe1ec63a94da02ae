"""Tiny random-weight models of real Hugging Face LVLM classes, with processors built offline.

One builder per registered adapter (`TINY_BUILDERS[name]() -> (model, processor)`); tests iterate
the registry over it, timm-style.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "USER ASSISTANT : ? . , ' What is the in of a an on to and or color colour Answer question using "
    "single word phrase Write general description image Is there box red green blue yellow digit left "
    "right top bottom yes no How many sign written A B C D option letter from given choices directly "
    "with"
).split()
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]


def word_tokenizer(extra_special: tuple[str, ...] = (), n_filler: int = 64) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a small fixed vocabulary (ids: unk 0, pad 1, bos 2, eos 3, image 4)."""
    vocab_words = SPECIAL + list(extra_special) + WORDS + [f"w{i}" for i in range(n_filler)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>", *extra_special],
    )
    tokenizer.padding_side = "left"
    return tokenizer


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
    LM attending over the last `sliding_window` tokens when that is set)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=32,
        ),
        text_config=(LlamaConfig if sliding_window is None else _mistral(sliding_window))(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    if do_pad:
        from transformers.models.llava.image_processing_llava import LlavaImageProcessor

        image_processor = LlavaImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            do_pad=True,
        )
    else:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def _mistral(sliding_window: int) -> Callable[..., Any]:
    from transformers import MistralConfig

    return lambda **kwargs: MistralConfig(sliding_window=sliding_window, **kwargs)


TINY_BUILDERS: dict[str, Callable[..., tuple[Any, Any]]] = {"llava": tiny_llava}


def _families_b(builder: str) -> Callable[..., tuple[Any, Any]]:
    """Lazy builders from `tiny_families_b` (Qwen-VL, InternVL, InstructBLIP, composite)."""

    def build(**kwargs: Any) -> tuple[Any, Any]:
        import tiny_families_b

        return getattr(tiny_families_b, builder)(**kwargs)

    build.__name__ = builder
    return build


# not a registered adapter name: a second `composite` fixture, on an open_clip tower
TINY_VARIANTS: dict[str, tuple[str, Callable[..., tuple[Any, Any]]]] = {
    "composite_open_clip": ("composite", _families_b("tiny_composite_open_clip")),
}


TINY_BUILDERS.update(
    {name: _families_b(f"tiny_{name}") for name in (
        "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "composite", "instructblip",
    )}
)


def _families_a(builder: str) -> Callable[..., tuple[Any, Any]]:
    """Lazy builders from `tiny_families_a` (LLaVA-NeXT, OneVision, Idefics3, SmolVLM, Gemma 3, PaliGemma)."""

    def build(**kwargs: Any) -> tuple[Any, Any]:
        import tiny_families_a

        return getattr(tiny_families_a, builder)(**kwargs)

    build.__name__ = builder
    return build


TINY_BUILDERS.update(
    {name: _families_a(f"tiny_{name}") for name in (
        "llava_next", "llava_onevision", "idefics3", "smolvlm", "gemma3", "paligemma",
    )}
)
