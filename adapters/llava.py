"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one 24x24 grid per image at 336 px."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import VisualLayout
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
        image_processor = self.processor.image_processor
        return self.fixed_grid_layout(inputs, index, self.grid, lambda size: processor_view_box(image_processor, size))
