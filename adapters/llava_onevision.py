"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`).

One image: base view + anyres tiles as LLaVA-NeXT, with `anyres_max_N` (past 1.1 x N tiles the
unpadded grid is bilinearly shrunk, and one segment covers it). Several images in one prompt:
each is padded to a square and gives its base view only, followed by one newline token.
"""

from __future__ import annotations

from ._anyres import AnyresGrid, anyres_segments, base_segment, square_pad_box
from ._registry import register_adapter
from .llava_next import LlavaNextAdapter


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """Qwen2 chat prompt `<|im_start|>user <image>\\n{q}\\n{instr}<|im_end|>\\n<|im_start|>assistant\\n`."""

    name = "llava_onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    default_checkpoint = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    default_layer = 14
    reference_num_layers = 28
    native_resolution = 384
    supports_multi_image = True
    nested_images = True  # the processor tiles a sample only when it holds one image
    template = "<|im_start|>user {images}{question}{instruction}<|im_end|>\n<|im_start|>assistant\n"

    def image_segments(self, index: int, image_index: int, size_wh, n_images: int):
        tile_px, side = self.tile_geometry()
        if n_images > 1:  # only single images are tiled
            return [base_segment(image_index, 0, side, square_pad_box(size_wh))], side * side + 1
        width, height = size_wh
        max_tiles = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        grid = AnyresGrid(self.model.config.image_grid_pinpoints, tile_px, side, max_tiles)
        tiles, n_tiles = anyres_segments(image_index, side * side, (height, width), grid)
        return [base_segment(image_index, 0, side), *tiles], side * side + n_tiles

    def _has_cls(self) -> bool:
        return False
