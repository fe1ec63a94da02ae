"""Gemma 3 (`Gemma3ForConditionalGeneration`): SigLIP at 896 px, 64x64 patches average-pooled to
`mm_tokens_per_image` (16x16) tokens per image, the whole image squashed (no pan-and-scan crops).

The image tokens attend to each other bidirectionally (`token_type_ids`); sliding-window layers
alternate with global ones. The probe reads the mask each layer gets, so both are accounted for.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import VisualLayout


@register_adapter
class Gemma3Adapter(PromptAdapter):
    """Prompt `<start_of_turn>user\\n<start_of_image>{q}\\n{instr}<end_of_turn>\\n<start_of_turn>model\\n`."""

    name = "gemma3"
    architectures = ("Gemma3ForConditionalGeneration",)
    model_class_name = "Gemma3ForConditionalGeneration"
    default_checkpoint = "google/gemma-3-4b-it"
    default_layer = 17
    reference_num_layers = 34
    native_resolution = 896
    supports_multi_image = True
    nested_images = True
    template = "<start_of_turn>user\n{images}{question}{instruction}<end_of_turn>\n<start_of_turn>model\n"
    image_text = "{token}"

    def __init__(self, model, processor, **kwargs):
        super().__init__(model, processor, **kwargs)
        side = math.isqrt(int(model.config.mm_tokens_per_image))
        self.grid = (side, side)
        if getattr(processor.image_processor, "do_pan_and_scan", False):
            raise ValueError("gemma3 adapter: pan-and-scan crops are not supported; set do_pan_and_scan=False")
        text = model.config.get_text_config()
        if "sliding_attention" in (getattr(text, "layer_types", None) or []):
            # Prefix reuse is not exact with sliding windows: a sliding layer's cache keeps only the last
            # window of keys (the probe's key positions are absolute) and the padding the continuation
            # batch inserts mid-sequence shrinks the window. Run two full prefills instead.
            self.supports_prefix_reuse = False

    def placeholder(self) -> str:
        return self.processor.boi_token

    def eos_token_ids(self) -> list[int]:
        ids = set(super().eos_token_ids())
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(end_of_turn, int) and end_of_turn != self.tokenizer.unk_token_id:
            ids.add(end_of_turn)
        return sorted(ids)

    def prepare_model_inputs(self, inputs: BatchFeature | dict[str, Any]) -> dict[str, Any]:
        """`token_type_ids` (1 on image tokens: their bidirectional block) recomputed from the ids, so
        it always matches them (the engine may cut `input_ids` to a shared prefix)."""
        out = super().prepare_model_inputs(inputs)
        if "token_type_ids" in out and "input_ids" in out:
            out["token_type_ids"] = (out["input_ids"] == self.image_token_id).long()
        return out

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        return self.fixed_grid_layout(inputs, index, self.grid)
