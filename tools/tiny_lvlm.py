"""Building blocks of tiny offline LVLMs: a word-level tokenizer and a LLaVA (CLIP tower + Llama LM).

The one copy shared by the tests' tiny models (`tests/tiny_models.py`), the performance bench
(`tools/bench.py`) and the testbed model (`tools/testbed/model.py`). It needs only `transformers` and
`tokenizers` (not `laser`), and lives in `tools/`, which the tests put on `sys.path` and the scripts in
`tools/` see as their own folder; the shipped package never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

SPECIAL = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
"""Ids 0-4: unk, pad, bos, eos and the image token."""
WORDS = (
    "USER ASSISTANT : ? . , ' What is the in of a an on to and or color colour Answer question using "
    "single word phrase Write general description image Is there box red green blue yellow digit left "
    "right top bottom yes no How many sign written A B C D option letter from given choices directly "
    "with"
).split()
"""The test and bench vocabulary: the prompts' words (LLaVA-1.5 template, the generic ViCrop prompt,
multiple-choice instructions) and a few answers."""


def word_tokenizer(
    words: Iterable[str] = WORDS,
    *,
    extra_special: tuple[str, ...] = (),
    n_filler: int = 64,
    lowercase: bool = False,
    bos: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """A left-padding word-level tokenizer: `SPECIAL`, then `extra_special`, `words` and `n_filler`
    filler words `w0 w1 ...` (duplicates dropped, first occurrence kept).

    `lowercase` lower-cases the text first; `bos` prepends `<s>` to every encoded text.
    """
    vocab_words = [*SPECIAL, *extra_special, *words, *(f"w{i}" for i in range(n_filler))]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    kwargs: dict[str, Any] = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>", *extra_special],
        **kwargs,
    )
    tokenizer.padding_side = "left"
    return tokenizer


def llava_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int,
    patch_size: int,
    vision_hidden: int = 32,
    vision_intermediate: int | None = None,
    vision_layers: int = 2,
    vision_heads: int = 2,
    feature_layer: int = -2,
    text_hidden: int = 64,
    text_intermediate: int | None = None,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int | None = None,
    max_positions: int = 4096,
    **extra: Any,
) -> LlavaConfig:
    """`LlavaConfig` of a CLIP ViT (`image_size` / `patch_size`) and a Llama LM over `tokenizer`.

    Intermediate sizes default to 2x the hidden sizes; `vocab_size` to the tokenizer's length.
    `extra` goes to `LlavaConfig` (e.g. `projector_hidden_act`, `image_seq_length`)."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_intermediate or 2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_intermediate or 2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        **extra,
    )


def llava_processor(
    tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int, image_processor: Any = None
) -> LlavaProcessor:
    """`LlavaProcessor` with a CLIP image processor (resize the short side to `image_size`, centre crop),
    one image token per patch plus the CLS token the `default` strategy drops."""
    if image_processor is None:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
