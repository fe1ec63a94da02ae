"""Tiny random-weight builders for the Qwen-VL, InternVL, InstructBLIP and composite families.

Each returns `(model, processor)` in float32 with every processor built offline; `vision_layers=0`
cuts the vision tower to its local part (no encoder self-attention), which the locality tests use.
"""

from __future__ import annotations

from typing import Any

import torch
from tiny_lvlm import word_tokenizer

QWEN_SPECIAL = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<|endoftext|>",
)


def _qwen_tokenizer():
    tokenizer = word_tokenizer(extra_special=QWEN_SPECIAL)
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def _qwen_text(cls, tokenizer, hidden: int, layers: int, **extra: Any):
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _qwen_processor(processor_cls, image_processor_cls, video_processor_cls, tokenizer, patch: int, max_side: int):
    factor = patch * 2
    sizes = {"size": {"shortest_edge": 4 * factor * factor, "longest_edge": max_side * max_side}}
    common = {"patch_size": patch, "merge_size": 2, "temporal_patch_size": 2}
    image_processor = image_processor_cls(**sizes, **common)
    video_processor = video_processor_cls(**common)
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)


def _qwen_ids(tokenizer) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def tiny_qwen2_vl(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random `Qwen2VLForConditionalGeneration` (patch 4, merge 2, images up to 64x64 px)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=vision_layers, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2,
            patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
        ),
        text_config=_qwen_text(Qwen2VLTextConfig, tokenizer, hidden, text_layers),
        **_qwen_ids(tokenizer),
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    processor = _qwen_processor(Qwen2VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, tokenizer, 4, 64)
    return model, processor


def tiny_qwen2_5_vl(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random `Qwen2_5_VLForConditionalGeneration` (window attention, patch 4, merge 2)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        vision_config=Qwen2_5_VLVisionConfig(
            depth=vision_layers, hidden_size=32, out_hidden_size=hidden, intermediate_size=64, num_heads=2,
            patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
            fullatt_block_indexes=[0] if vision_layers else [],
        ),
        text_config=_qwen_text(Qwen2_5_VLTextConfig, tokenizer, hidden, text_layers),
        **_qwen_ids(tokenizer),
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = _qwen_processor(Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, tokenizer, 4, 64)
    return model, processor


def tiny_qwen3_vl(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random `Qwen3VLForConditionalGeneration` (deepstack, learned position grid, patch 4)."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        vision_config=Qwen3VLVisionConfig(
            depth=vision_layers, hidden_size=32, out_hidden_size=hidden, intermediate_size=64, num_heads=2,
            patch_size=4, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
            deepstack_visual_indexes=[0] if vision_layers else [],
        ),
        text_config=_qwen_text(Qwen3VLTextConfig, tokenizer, hidden, text_layers, head_dim=hidden // 4),
        **_qwen_ids(tokenizer),
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    processor = _qwen_processor(Qwen3VLProcessor, Qwen2VLImageProcessor, Qwen3VLVideoProcessor, tokenizer, 4, 64)
    return model, processor


def tiny_internvl(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random `InternVLForConditionalGeneration` (Qwen2 LM; 32 px tiles, patch 4, pixel shuffle 0.5:
    16 tokens per tile; up to 4 tiles plus a thumbnail)."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    roles = {
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    base = word_tokenizer(extra_special=(*roles.values(), "<|im_start|>", "<|im_end|>"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="<|im_end|>", extra_special_tokens=roles, padding_side="left",
    )
    torch.manual_seed(seed)
    tile, patch = 32, 4
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=32, num_hidden_layers=vision_layers, num_attention_heads=2, intermediate_size=64,
            image_size=[tile, tile], patch_size=[patch, patch],
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=(tile // patch // 2) ** 2,
    )
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessor(
        size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
        image_seq_length=(tile // patch // 2) ** 2,
    )
    return model, processor


def _tiny_causal_lm(tokenizer, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def tiny_composite(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A `CompositeVLM`: random timm ViT (32 px, patch 8: 4x4 tokens), MLP projector, Llama LM."""
    from laser.adapters.composite import CompositeVLM

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    vision = {
        "library": "timm", "name": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "num_heads": 2, "depth": vision_layers},
    }
    return CompositeVLM.build(vision, _tiny_causal_lm(tokenizer, hidden, text_layers), tokenizer)


def tiny_composite_open_clip(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A `CompositeVLM` on a random open_clip ViT-B-32 visual tower shrunk to 32 px / patch 8 / width 32."""
    from laser.adapters.composite import CompositeVLM

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    vision = {
        "library": "open_clip", "name": "ViT-B-32",
        "kwargs": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": vision_layers},
    }
    return CompositeVLM.build(vision, _tiny_causal_lm(tokenizer, hidden, text_layers), tokenizer, "linear")


def tiny_instructblip(*, vision_layers: int = 1, text_layers: int = 3, hidden: int = 64, seed: int = 0):
    """A random `InstructBlipForConditionalGeneration`: 32 px images, patch 8 (4x4 patches + CLS),
    a 2-layer Q-Former with 8 query tokens cross-attending every layer, and a Llama LM."""
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        LlamaConfig,
    )
    from transformers.models.instructblip.configuration_instructblip import (
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )

    tokenizer = word_tokenizer()
    qformer_tokenizer = word_tokenizer()
    qformer_tokenizer.padding_side = "right"
    torch.manual_seed(seed)
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=2,
            image_size=32, patch_size=8, initializer_range=0.02,
        ),
        qformer_config=InstructBlipQFormerConfig(
            vocab_size=len(qformer_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, cross_attention_frequency=1, encoder_hidden_size=32,
            pad_token_id=qformer_tokenizer.pad_token_id,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        num_query_tokens=8,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = InstructBlipProcessor(
        image_processor=image_processor, tokenizer=tokenizer, qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=8,
    )
    return model, processor
