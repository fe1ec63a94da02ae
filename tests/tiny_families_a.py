"""Tiny random-weight builders for LLaVA-NeXT, LLaVA-OneVision, Idefics3, SmolVLM, Gemma 3, PaliGemma.

Each returns `(model, processor)` in float32 (hidden 64, 2 text layers, small images and patches)
with every processor built offline. `vision_layers=0` cuts the vision tower to its local part (no
encoder self-attention: each visual token sees only its own patch, or its merged / pooled cell),
which the locality tests use: the encoder layers stay (some towers return no hidden states without
them) with their self-attention output projections zeroed.
"""

from __future__ import annotations

from typing import Any

import torch
from tiny_lvlm import word_tokenizer

HIDDEN = 64


def localise(model):
    """Zero the vision encoder's self-attention output projections: every token keeps its own patch."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if "vision" in name and name.endswith("self_attn.out_proj"):
                module.weight.zero_()
                module.bias.zero_()
    return model


def _vision(cls, *, image_size: int, patch_size: int, layers: int, **extra: Any):
    return cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        **extra,
    )


def _llama(tokenizer, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


# ------------------------------------------------------------------------------- LLaVA-NeXT / OneVision
ANYRES_SIDE, ANYRES_PATCH = 28, 7  # 4x4 tokens per tile
ANYRES_PINPOINTS = [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28], [56, 84], [84, 56]]


def tiny_llava_next(*, vision_layers: int = 1, text_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """`LlavaNextForConditionalGeneration`: CLIP tiles of 28 px / patch 7 (4x4 tokens), Llama LM."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_llava_next import LlavaNextImageProcessor

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=_vision(
            CLIPVisionConfig, image_size=ANYRES_SIDE, patch_size=ANYRES_PATCH, layers=max(vision_layers, 1),
            projection_dim=32,
        ),
        text_config=_llama(tokenizer, text_layers),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    if vision_layers == 0:
        localise(model)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": ANYRES_SIDE},
        crop_size={"height": ANYRES_SIDE, "width": ANYRES_SIDE},
        image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=ANYRES_PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return model, processor


def tiny_llava_onevision(*, vision_layers: int = 1, text_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """`LlavaOnevisionForConditionalGeneration`: SigLIP tiles of 28 px / patch 7, Qwen2 LM, anyres_max_9."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_llava_onevision import (
        LlavaOnevisionImageProcessor,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = word_tokenizer(extra_special=("<video>",))
    torch.manual_seed(seed)
    llama = _llama(tokenizer, text_layers).to_dict()
    text = Qwen2Config(**{k: llama[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id",
    )})
    config = LlavaOnevisionConfig(
        vision_config=_vision(SiglipVisionConfig, image_size=ANYRES_SIDE, patch_size=ANYRES_PATCH, layers=max(vision_layers, 1)),
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    if vision_layers == 0:
        localise(model)
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": ANYRES_SIDE, "width": ANYRES_SIDE}, image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    video_processor = LlavaOnevisionVideoProcessor(size={"height": ANYRES_SIDE, "width": ANYRES_SIDE})
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        num_image_tokens=(ANYRES_SIDE // ANYRES_PATCH) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return model, processor


# ------------------------------------------------------------------------------- Idefics3 / SmolVLM
IDEFICS_SPECIAL = (
    "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "User", "Assistant",
    *[f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)],
)
IDEFICS_TILE, IDEFICS_PATCH, IDEFICS_SCALE = 48, 8, 2  # 6x6 patches -> 3x3 tokens per tile


def _idefics_parts(smol: bool, seed: int):
    tokenizer = word_tokenizer(extra_special=IDEFICS_SPECIAL + (("<video>",) if smol else ()))
    tokenizer.eos_token = "<end_of_utterance>"
    torch.manual_seed(seed)
    seq_len = (IDEFICS_TILE // IDEFICS_PATCH) ** 2 // IDEFICS_SCALE**2
    image_kwargs = dict(
        size={"longest_edge": 2 * IDEFICS_TILE}, max_image_size={"longest_edge": IDEFICS_TILE},
        do_image_splitting=True,
    )
    return tokenizer, seq_len, image_kwargs


def tiny_idefics3(*, vision_layers: int = 1, text_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """`Idefics3ForConditionalGeneration`: 48 px tiles / patch 8 / pixel shuffle 2 (3x3 tokens per tile)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tokenizer, seq_len, image_kwargs = _idefics_parts(False, seed)
    config = Idefics3Config(
        vision_config=_vision(Idefics3VisionConfig, image_size=IDEFICS_TILE, patch_size=IDEFICS_PATCH, layers=max(vision_layers, 1)),
        text_config=_llama(tokenizer, text_layers),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=IDEFICS_SCALE,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    if vision_layers == 0:
        localise(model)
    processor = Idefics3Processor(Idefics3ImageProcessor(**image_kwargs), tokenizer, image_seq_len=seq_len)
    return model, processor


def tiny_smolvlm(*, vision_layers: int = 1, text_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """`SmolVLMForConditionalGeneration`: as Idefics3 (48 px tiles, pixel shuffle 2)."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig

    tokenizer, seq_len, image_kwargs = _idefics_parts(True, seed)
    config = SmolVLMConfig(
        vision_config=_vision(SmolVLMVisionConfig, image_size=IDEFICS_TILE, patch_size=IDEFICS_PATCH, layers=max(vision_layers, 1)),
        text_config=_llama(tokenizer, text_layers),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=IDEFICS_SCALE,
    )
    model = SmolVLMForConditionalGeneration(config).eval()
    if vision_layers == 0:
        localise(model)
    video = SmolVLMVideoProcessor(max_image_size={"longest_edge": IDEFICS_TILE}, size={"longest_edge": IDEFICS_TILE})
    processor = SmolVLMProcessor(SmolVLMImageProcessor(**image_kwargs), tokenizer, video, image_seq_len=seq_len)
    return model, processor


# ------------------------------------------------------------------------------- Gemma 3 / PaliGemma
def tiny_gemma3(
    *, vision_layers: int = 1, text_layers: int = 2, sliding_window: int = 20, seed: int = 0
) -> tuple[Any, Any]:
    """`Gemma3ForConditionalGeneration`: SigLIP 32 px / patch 4 (8x8) pooled to 4x4 tokens; layer 0
    slides over `sliding_window` tokens (fewer than the prompt), layer 1 is global."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    names = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = word_tokenizer(extra_special=(*names.values(), "<start_of_turn>", "<end_of_turn>", "user", "model"))
    tokenizer._set_model_specific_special_tokens(names)  # saved with the tokenizer, as Gemma 3's are
    torch.manual_seed(seed)
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"] * (text_layers // 2),
        query_pre_attn_scalar=16, attn_logit_softcapping=30.0, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=_vision(SiglipVisionConfig, image_size=32, patch_size=4, layers=max(vision_layers, 1)),
        mm_tokens_per_image=16,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # initialised to zeros: every image token would be the same
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    if vision_layers == 0:
        localise(model)
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=16)
    return model, processor


def tiny_paligemma(*, vision_layers: int = 1, text_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """`PaliGemmaForConditionalGeneration`: SigLIP 32 px / patch 4 (8x8 tokens), Gemma LM, prefix-LM mask."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tokenizer = word_tokenizer(extra_special=("answer", "en"), n_filler=16)
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 64
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(seed)
    text = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=_vision(SiglipVisionConfig, image_size=32, patch_size=4, layers=max(vision_layers, 1), projection_dim=HIDDEN),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=HIDDEN,
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    if vision_layers == 0:
        localise(model)
    return model, processor
