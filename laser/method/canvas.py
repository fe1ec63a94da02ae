"""Painting per-token values onto the image plane through a `VisualLayout` (docs/method.md, "Adapter contract").

The painted map is a density: a token's value is spread over the region its patch covers, so the
sum over a window is the mass of the map inside that window, whatever the grids' sizes.
"""

from __future__ import annotations

import dataclasses

import torch

from ..adapters.base import Box, VisualLayout


def canvas_shape(image_size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(height, width) of a canvas with the image's aspect ratio and at most `long_side` pixels."""
    width, height = image_size
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def paint_map(
    values: torch.Tensor, layout: VisualLayout, image_index: int, shape: tuple[int, int]
) -> torch.Tensor:
    """Density canvas [height, width] of `values` ([n_visual], ordered like `layout`) for one image."""
    height, width = shape
    canvas = torch.zeros(height, width, dtype=torch.float32)
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    v = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    for segment, grid in zip(layout.segments, layout.split(values.float().cpu())):
        if segment.image_index != image_index:
            continue
        rows, cols = segment.grid
        x0, y0, x1, y1 = segment.box
        col = torch.floor((u - x0) / (x1 - x0) * cols).long()
        row = torch.floor((v - y0) / (y1 - y0) * rows).long()
        col_ok, row_ok = (col >= 0) & (col < cols), (row >= 0) & (row < rows)
        cell_area = (x1 - x0) / cols * (y1 - y0) / rows
        painted = grid[row.clamp(0, rows - 1)][:, col.clamp(0, cols - 1)] / cell_area
        canvas += painted * (row_ok[:, None] & col_ok[None, :]).float()
    return canvas


def integral_image(canvas: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero first row and column: [h+1, w+1] float64."""
    padded = torch.zeros(canvas.shape[0] + 1, canvas.shape[1] + 1, dtype=torch.float64)
    padded[1:, 1:] = canvas.double().cumsum(0).cumsum(1)
    return padded


def window_sums(canvas: torch.Tensor, win_h: int, win_w: int) -> torch.Tensor:
    """Sum of the canvas in every win_h x win_w window: [h - win_h + 1, w - win_w + 1]."""
    table = integral_image(canvas)
    return (
        table[win_h:, win_w:] - table[:-win_h, win_w:] - table[win_h:, :-win_w] + table[:-win_h, :-win_w]
    )


def placed_layout(layout: VisualLayout, region: Box = (0.0, 0.0, 1.0, 1.0), stretch: bool = False) -> VisualLayout:
    """`layout` with every segment's box in the coordinates of a larger image of which this layout's image
    is the normalised `region` (a tile of it; the whole image by default).

    With `stretch`, each image's grids are first stretched so that together they span the whole image
    (`crop.geometry: whole`, ViCrop's geometry: LLaVA-1.5's grid laid over the whole photo although the
    processor centre-crops it).
    """
    rx0, ry0, rx1, ry1 = region
    union: dict[int, Box] = {}
    if stretch:
        for s in layout.segments:
            u = union.get(s.image_index, s.box)
            union[s.image_index] = (min(u[0], s.box[0]), min(u[1], s.box[1]), max(u[2], s.box[2]), max(u[3], s.box[3]))
    segments = []
    for s in layout.segments:
        x0, y0, x1, y1 = s.box
        if stretch:
            ux0, uy0, ux1, uy1 = union[s.image_index]
            x0, x1 = (x0 - ux0) / (ux1 - ux0), (x1 - ux0) / (ux1 - ux0)
            y0, y1 = (y0 - uy0) / (uy1 - uy0), (y1 - uy0) / (uy1 - uy0)
        box = (rx0 + x0 * (rx1 - rx0), ry0 + y0 * (ry1 - ry0), rx0 + x1 * (rx1 - rx0), ry0 + y1 * (ry1 - ry0))
        segments.append(dataclasses.replace(s, box=box))
    return VisualLayout(segments, layout.image_sizes)


WEIGHT_GRID = 2.0**32
"""Cell weights of `cell_masses` are rounded to multiples of 1 / WEIGHT_GRID."""


def _overlaps(lo: float, hi: float, cells: int, bins: int) -> torch.Tensor:
    """[cells, bins]: the share of each of `cells` equal cells spanning [lo, hi] that falls in each of
    `bins` equal bins of [0, 1] (parts outside [0, 1] fall in none)."""
    src = lo + (hi - lo) * torch.arange(cells + 1, dtype=torch.float64) / cells
    dst = torch.arange(bins + 1, dtype=torch.float64) / bins
    inside = torch.minimum(src[1:, None], dst[None, 1:]) - torch.maximum(src[:-1, None], dst[None, :-1])
    share = inside.clamp(min=0) / ((hi - lo) / cells)
    # on the dyadic grid 2^-32: a share that is 1 (or 1/2, ...) up to float rounding becomes exactly that,
    # so windows of equal mass tie exactly and ViCrop's first-in-order rule picks the same one as its code
    return torch.round(share * WEIGHT_GRID) / WEIGHT_GRID


def cell_masses(
    values: torch.Tensor, layout: VisualLayout, image_index: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Mass of the map in each cell of a `grid` = (rows, cols) of equal cells over the whole image:
    [rows, cols] float64, exact (a token's value spread evenly over the region its patch covers, split
    between cells by area). values: [n_visual], ordered like `layout`."""
    rows, cols = grid
    out = torch.zeros(rows, cols, dtype=torch.float64)
    for segment, cells in zip(layout.segments, layout.split(values.double().cpu())):
        if segment.image_index != image_index:
            continue
        x0, y0, x1, y1 = segment.box
        seg_rows, seg_cols = segment.grid
        out += _overlaps(y0, y1, seg_rows, rows).T @ cells @ _overlaps(x0, x1, seg_cols, cols)
    return out
