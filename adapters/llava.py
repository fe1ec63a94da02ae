"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one 24x24 grid per image at 336 px."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BatchFeature

from ._registry import register_adapter
from .base import ImageInput, VisionLanguageAdapter, VisualLayout, VisualSegment
from .geometry import processor_view_box


def as_image_list(images: ImageInput) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


@register_adapter
class LlavaAdapter(VisionLanguageAdapter):
    """LLaVA-1.5 prompt `USER: <image>\\n{question}\\n{instruction} ASSISTANT:`."""

    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    default_layer = 14
    native_resolution = 336
    supports_multi_image = True
    default_checkpoint = "llava-hf/llava-1.5-7b-hf"

    @classmethod
    def from_pretrained(cls, path: str, **load_kwargs: Any) -> LlavaAdapter:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        instruction = load_kwargs.pop("instruction", None)
        load_kwargs.setdefault("dtype", torch.float32)
        model = LlavaForConditionalGeneration.from_pretrained(path, **load_kwargs).eval()
        processor = AutoProcessor.from_pretrained(path)
        kwargs = {"instruction": instruction} if instruction is not None else {}
        return cls(model, processor, **kwargs)

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any):
        super().__init__(model, processor, **kwargs)
        self.tokenizer.padding_side = "left"
        self.image_token = getattr(processor, "image_token", "<image>")
        self.image_token_id = int(model.config.image_token_id)
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        self.grid = (side, side)
        self.native_resolution = int(vision.image_size)

    # ----------------------------------------------------------------- prompts
    def prompt(self, question: str | None, n_images: int) -> str:
        images = "".join(f"{self.image_token}\n" for _ in range(n_images))
        question_part = f"{question}\n" if question is not None else ""
        return f"USER: {images}{question_part}{self.instruction} ASSISTANT:"

    def build_inputs(
        self, images: list[ImageInput], questions: list[str], *, with_question: bool = True
    ) -> BatchFeature:
        if len(images) != len(questions):
            raise ValueError(f"build_inputs: {len(images)} images for {len(questions)} questions")
        per_sample = [as_image_list(im) for im in images]
        texts = [
            self.prompt(q if with_question else None, len(ims)) for q, ims in zip(questions, per_sample)
        ]
        flat = [im for ims in per_sample for im in ims]
        inputs = self.processor(text=texts, images=flat, return_tensors="pt", padding=True)
        inputs["laser_image_sizes"] = [[im.size for im in ims] for ims in per_sample]
        return inputs

    # ----------------------------------------------------------------- structure
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        positions = (inputs["input_ids"][index] == self.image_token_id).nonzero().flatten()
        sizes = inputs["laser_image_sizes"][index]
        rows, cols = self.grid
        per_image = rows * cols
        if positions.numel() != per_image * len(sizes):
            raise ValueError(
                f"sample {index}: {positions.numel()} image tokens for {len(sizes)} image(s) of "
                f"{rows}x{cols} tokens"
            )
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

    def position_ids(self, attention_mask: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        return super().position_ids(attention_mask, past_length)
