"""InternVL (`InternVLForConditionalGeneration`, the HF-native class): dynamic tiles plus a thumbnail.

The processor resizes the image to a `cols x rows` arrangement of square tiles (the arrangement
closest to the image's aspect ratio within `min_patches..max_patches`), and adds a thumbnail of the
whole image when there is more than one tile. Each tile gives `(tile / patch * downsample)^2` tokens
(pixel shuffle), row-major; a sample's image is `<img>` + tiles + thumbnail + `</img>`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import VisualLayout, VisualSegment


def _tile_side(image_processor: Any) -> tuple[int, int]:
    size = image_processor.size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k)
    return int(get("height")), int(get("width"))


@register_adapter
class InternVLAdapter(PromptAdapter):
    """Chat prompt `<|im_start|>user\\n<IMG_CONTEXT>\\n{question}\\n{instruction}<|im_end|>...`;
    the processor expands `<IMG_CONTEXT>` to `<img>` + tokens + `</img>`."""

    name = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    default_layer = 12
    reference_num_layers = 28
    native_resolution = 448
    supports_multi_image = True
    model_class_name = "InternVLForConditionalGeneration"
    default_checkpoint = "OpenGVLab/InternVL3-8B-hf"

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any):
        super().__init__(model, processor, **kwargs)
        self.image_token = processor.image_token
        self.start_token_id = int(processor.start_image_token_id)
        self.tokens_per_tile = int(processor.image_seq_length)
        self.side = math.isqrt(self.tokens_per_tile)
        if self.side * self.side != self.tokens_per_tile:
            raise ValueError(f"internvl: {self.tokens_per_tile} tokens per tile is not a square grid")

    # ----------------------------------------------------------------- prompts
    def prompt(self, question: str | None, n_images: int) -> str:
        images = f"{self.image_token}\n" * n_images
        question_part = f"{question}\n" if question is not None else ""
        return f"<|im_start|>user\n{images}{question_part}{self.instruction}<|im_end|>\n<|im_start|>assistant\n"

    # ----------------------------------------------------------------- structure
    def tile_arrangement(self, size: tuple[int, int], n_tiles: int) -> tuple[int, int]:
        """(rows, cols) of the tiles the processor cut an image of `size` (width, height) into."""
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

        image_processor = self.processor.image_processor
        lo, hi = int(getattr(image_processor, "min_patches", 1)), int(getattr(image_processor, "max_patches", 12))
        cols, rows = get_optimal_tiled_canvas((size[1], size[0]), _tile_side(image_processor), lo, hi)
        if rows * cols != n_tiles:
            raise ValueError(f"internvl: {n_tiles} tiles for an image of {size}; expected {rows}x{cols}")
        return rows, cols

    def pixel_rows(self, inputs: BatchFeature) -> dict[str, list[int]]:
        """`pixel_values` holds the tiles (thumbnails included) of all images: one row per tile, i.e. per
        `image_seq_length` image tokens of the sample."""
        counts = (inputs["input_ids"] == self.image_token_id).sum(dim=-1) // self.tokens_per_tile
        return {"pixel_values": [int(n) for n in counts]}

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        ids = inputs["input_ids"][index]
        is_image = ids == self.image_token_id
        starts = (ids == self.start_token_id).nonzero().flatten().tolist()
        sizes = inputs["laser_image_sizes"][index]
        if len(starts) != len(sizes):
            raise ValueError(f"sample {index}: {len(starts)} <img> spans for {len(sizes)} image(s)")
        per_tile, grid = self.tokens_per_tile, (self.side, self.side)
        segments = []
        for i, (start, size) in enumerate(zip(starts, sizes)):
            end = start + 1
            while end < ids.numel() and is_image[end]:
                end += 1
            positions = torch.arange(start + 1, end)
            n_patches, rest = divmod(positions.numel(), per_tile)
            if rest or not n_patches:
                raise ValueError(f"sample {index}, image {i}: {positions.numel()} tokens, {per_tile} per tile")
            chunks = positions.split(per_tile)
            if n_patches == 1:
                segments.append(VisualSegment(i, chunks[0], grid, (0.0, 0.0, 1.0, 1.0)))
                continue
            rows, cols = self.tile_arrangement(size, n_patches - 1)
            for t in range(n_patches - 1):
                r, c = divmod(t, cols)
                box = (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
                segments.append(VisualSegment(i, chunks[t], grid, box))
            segments.append(VisualSegment(i, chunks[-1], grid, (0.0, 0.0, 1.0, 1.0)))  # thumbnail
        return VisualLayout(segments, image_sizes=list(sizes))
