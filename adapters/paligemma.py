"""PaliGemma (`PaliGemmaForConditionalGeneration`): SigLIP, one square grid per image (squashed).

The prompt is a prefix-LM block: image tokens and prompt attend to each other bidirectionally, so the
visual tokens' keys and values depend on the question (no prefix reuse between the with- and
without-question prefills). Positions are 1-indexed.
"""

from __future__ import annotations

import math

import torch
from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import VisualLayout


@register_adapter
class PaliGemmaAdapter(PromptAdapter):
    """Prompt `<image>...<bos>answer en {q}\\n` (the processor adds `<bos>` and the newline)."""

    name = "paligemma"
    architectures = ("PaliGemmaForConditionalGeneration",)
    model_class_name = "PaliGemmaForConditionalGeneration"
    default_checkpoint = "google/paligemma2-3b-mix-448"
    default_layer = 13
    reference_num_layers = 26
    native_resolution = 448
    supports_multi_image = False
    supports_prefix_reuse = False  # the prefix (image and question) attends both ways: its visual keys depend on the question
    template = "{images}answer en{question}"
    image_text = "{token}"

    def __init__(self, model, processor, **kwargs):
        super().__init__(model, processor, **kwargs)
        per_image = int(processor.image_seq_length)
        side = math.isqrt(per_image)
        if side * side != per_image:
            raise ValueError(f"paligemma adapter: {per_image} image tokens are not a square grid")
        self.grid = (side, side)

    def prompt(self, question: str | None, n_images: int) -> str:
        images = self.image_text.format(token=self.placeholder()) * n_images
        return self.template.format(images=images, question=f" {question}" if question is not None else "")

    def position_ids(self, attention_mask: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        return super().position_ids(attention_mask, past_length) + 1

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        return self.fixed_grid_layout(inputs, index, self.grid)
