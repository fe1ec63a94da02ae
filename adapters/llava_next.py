"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): base view + anyres tiles, unpadded, with newlines.

Per image the model emits the base view (side x side tokens, whole image squashed) and then the
tiles merged into one grid, unpadded and closed by a newline token per row; the layout has one
segment for the base view and one per (surviving part of a) tile.
"""

from __future__ import annotations

from dataclasses import replace

from transformers import BatchFeature
from transformers.image_processing_utils import select_best_resolution

from ._anyres import AnyresGrid, _box, anyres_segments, base_segment, pasted_region
from ._common import PromptAdapter
from ._registry import register_adapter
from .base import PixelView, VisualLayout, VisualSegment


def remap(segments: list[VisualSegment], positions) -> list[VisualSegment]:
    """Segments whose positions are offsets into `positions` -> absolute sequence positions."""
    return [replace(s, positions=positions[s.positions]) for s in segments]


@register_adapter
class LlavaNextAdapter(PromptAdapter):
    """LLaVA-NeXT / LLaVA-1.6; prompt in the Mistral format `[INST] <image>\\n{q}\\n{instr} [/INST]`."""

    name = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)
    model_class_name = "LlavaNextForConditionalGeneration"
    default_checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"
    default_layer = 14
    reference_num_layers = 32
    native_resolution = 336
    supports_multi_image = True
    template = "[INST] {images}{question}{instruction} [/INST]"

    def tile_geometry(self) -> tuple[int, int]:
        """(tile side in pixels, tokens per tile side)."""
        vision = self.model.config.vision_config
        return int(vision.image_size), int(vision.image_size) // int(vision.patch_size)

    def base_box(self, size_wh: tuple[int, int]):
        return (0.0, 0.0, 1.0, 1.0)  # the base view squashes the whole image

    def image_segments(self, index: int, image_index: int, size_wh, n_images: int):
        """(segments with offsets relative to the image's first token, number of tokens)."""
        tile_px, side = self.tile_geometry()
        if self.model.config.vision_feature_select_strategy != "default" and self._has_cls():
            raise ValueError(f"{self.name}: vision_feature_select_strategy='full' keeps CLS tokens")
        width, height = size_wh
        grid = AnyresGrid(self.model.config.image_grid_pinpoints, tile_px, side)
        tiles, n_tiles = anyres_segments(image_index, side * side, (height, width), grid)
        return [base_segment(image_index, 0, side, self.base_box(size_wh)), *tiles], side * side + n_tiles

    def _has_cls(self) -> bool:
        return self.model.config.vision_config.model_type == "clip_vision_model"

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        positions = self.image_token_positions(inputs, index)
        sizes = inputs["laser_image_sizes"][index]
        parts = [self.image_segments(index, i, size, len(sizes)) for i, size in enumerate(sizes)]
        self.check_count(index, positions.numel(), sum(count for _, count in parts))
        segments, offset = [], 0
        for image_segments, count in parts:
            segments += remap(image_segments, positions[offset : offset + count])
            offset += count
        return VisualLayout(segments, image_sizes=list(sizes))

    def pixel_views(self, inputs: BatchFeature, index: int) -> list[PixelView]:
        """Per image its `pixel_values` patches: the base view (the layout's base box), then — when the
        image is tiled — the tiles of the best-resolution canvas, row-major, each showing its part of the
        canvas the image was pasted into (padding beyond the image included)."""
        counts = self.pixel_rows(inputs)["pixel_values"]
        start = sum(counts[:index])
        part = inputs["pixel_values"][start : start + counts[index]]
        sizes = inputs["laser_image_sizes"][index]
        part = part.view(len(sizes), -1, *part.shape[-3:])  # [images, patches, C, H, W]
        tile_px, _ = self.tile_geometry()
        views = []
        for i, size in enumerate(sizes):
            segments, _ = self.image_segments(index, i, size, len(sizes))
            views.append(PixelView(i, segments[0].box, part[i, 0]))
            if len(segments) == 1:
                continue
            width, height = size
            best_h, best_w = select_best_resolution([height, width], self.model.config.image_grid_pinpoints)
            paste = pasted_region((height, width), (best_h, best_w))
            tiles_w = best_w // tile_px
            for t in range((best_h // tile_px) * tiles_w):
                r, c = divmod(t, tiles_w)
                rows, cols = (r * tile_px, (r + 1) * tile_px), (c * tile_px, (c + 1) * tile_px)
                views.append(PixelView(i, _box(rows, cols, (1.0, 1.0), paste), part[i, 1 + t]))
        return views
