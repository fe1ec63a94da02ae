"""LLaVA-NeXT "anyres" geometry: base view + tile grid, unpadding and newline tokens.

The model lays the tiles' tokens out as ONE big grid (tiles side by side), unpads it (drops the rows
or columns over the processor's letterbox padding), and appends a newline token after every row.
Every token keeps its pixel cell in the best-resolution canvas, so each surviving part of a tile
is a `VisualSegment` whose box follows from where the processor pasted the resized image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.image_processing_utils import select_best_resolution

from .base import Box, VisualSegment


def pasted_region(size_hw: tuple[int, int], canvas_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image resized into the canvas with its aspect ratio and
    centred (as `get_patch_output_size` and `_get_padding_size` of the LLaVA-NeXT processor)."""
    height, width = size_hw
    canvas_h, canvas_w = canvas_hw
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        new_w, new_h = canvas_w, min(math.ceil(height * scale_w), canvas_h)
    else:
        new_h, new_w = canvas_h, min(math.ceil(width * scale_h), canvas_w)
    return (canvas_h - new_h) // 2, (canvas_w - new_w) // 2, new_h, new_w


def unpadded_span(size_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the token grid that `unpad_image` of the model keeps."""
    height, width = size_hw
    rows, cols = grid_hw
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return pad, rows - pad, 0, cols
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - pad


def _box(rows: tuple[int, int], cols: tuple[int, int], cell: tuple[float, float], paste) -> Box:
    top, left, new_h, new_w = paste
    cell_h, cell_w = cell
    return (
        (cols[0] * cell_w - left) / new_w,
        (rows[0] * cell_h - top) / new_h,
        (cols[1] * cell_w - left) / new_w,
        (rows[1] * cell_h - top) / new_h,
    )


@dataclass(frozen=True)
class AnyresGrid:
    """How a LLaVA-NeXT-style processor tiles an image: `pinpoints` (the candidate resolutions),
    `tile_px` (side of one tile in pixels), `side` (tokens per tile side), `max_tiles` (OneVision's
    `anyres_max_N`: the grid is bilinearly shrunk past 1.1x N tiles; None for LLaVA-NeXT)."""

    pinpoints: list
    tile_px: int
    side: int
    max_tiles: int | None = None


def anyres_segments(
    image_index: int, start: int, size_hw: tuple[int, int], grid_spec: AnyresGrid
) -> tuple[list[VisualSegment], int]:
    """Segments of the high-resolution grid of one image whose first token is at sequence `start`.

    size_hw: original (height, width). Past OneVision's tile limit one segment covers the whole
    unpadded region. Returns (segments, number of tokens incl. newlines).
    """
    pinpoints, tile_px, side, max_tiles = grid_spec.pinpoints, grid_spec.tile_px, grid_spec.side, grid_spec.max_tiles
    best_h, best_w = select_best_resolution(list(size_hw), pinpoints)
    tiles_h, tiles_w = best_h // tile_px, best_w // tile_px
    rows, cols = tiles_h * side, tiles_w * side
    r0, r1, c0, c1 = unpadded_span(size_hw, (rows, cols))
    paste = pasted_region(size_hw, (best_h, best_w))
    cell = (best_h / rows, best_w / cols)
    kept_h, kept_w = r1 - r0, c1 - c0
    if max_tiles is not None:
        ratio = math.sqrt(kept_h * kept_w / (max_tiles * side**2))
        if ratio > 1.1:
            grid = (int(kept_h // ratio), int(kept_w // ratio))
            row_stride = grid[1] + 1
            index = torch.arange(grid[0])[:, None] * row_stride + torch.arange(grid[1])[None, :]
            segment = VisualSegment(
                image_index, start + index.flatten(), grid, _box((r0, r1), (c0, c1), cell, paste)
            )
            return [segment], grid[0] * row_stride
    row_stride = kept_w + 1  # one newline token per row
    segments = []
    for ti in range(tiles_h):
        rs = (max(ti * side, r0), min((ti + 1) * side, r1))
        for tj in range(tiles_w):
            cs = (max(tj * side, c0), min((tj + 1) * side, c1))
            if rs[1] <= rs[0] or cs[1] <= cs[0]:
                continue
            r = torch.arange(rs[0], rs[1]) - r0
            c = torch.arange(cs[0], cs[1]) - c0
            positions = start + (r[:, None] * row_stride + c[None, :]).flatten()
            grid = (rs[1] - rs[0], cs[1] - cs[0])
            segments.append(VisualSegment(image_index, positions, grid, _box(rs, cs, cell, paste)))
    return segments, kept_h * row_stride


def square_pad_box(size_wh: tuple[int, int]) -> Box:
    """Box of an image padded to a centred square (`pad_to_square`): may extend outside [0, 1]."""
    width, height = size_wh
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    return (-left / width, -top / height, (side - left) / width, (side - top) / height)


def base_segment(image_index: int, start: int, side: int, box: Box = (0.0, 0.0, 1.0, 1.0)) -> VisualSegment:
    """The base (whole-image) view: side x side tokens from `start`."""
    return VisualSegment(image_index, start + torch.arange(side * side), (side, side), box)
