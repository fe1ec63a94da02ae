"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one 24x24 grid per image at 336 px."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import VisualLayout, VisualSegment
from .geometry import processor_view_box


@register_adapter
class LlavaAdapter(PromptAdapter):
    """LLaVA-1.5 prompt `USER: <image>\\n{question}\\n{instruction} ASSISTANT:`."""

    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    model_class_name = "LlavaForConditionalGeneration"
    default_layer = 14
    native_resolution = 336
    supports_multi_image = True
    default_checkpoint = "llava-hf/llava-1.5-7b-hf"

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any):
        super().__init__(model, processor, **kwargs)
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        self.grid = (side, side)
        self.native_resolution = int(vision.image_size)

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        positions = self.image_token_positions(inputs, index)
        sizes = inputs["laser_image_sizes"][index]
        rows, cols = self.grid
        per_image = rows * cols
        self.check_count(index, positions.numel(), per_image * len(sizes))
        segments = [
            VisualSegment(
                image_index=i,
                positions=positions[i * per_image : (i + 1) * per_image],
                grid=self.grid,
                box=processor_view_box(self.processor.image_processor, size),
            )
            for i, size in enumerate(sizes)
        ]
        return VisualLayout(segments, image_sizes=list(sizes))
