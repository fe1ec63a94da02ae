"""Where to zoom: Con-ViCrop window placement and ViCrop's multi-scale windows (docs/method.md)."""

from __future__ import annotations

import math

import torch

from ..adapters.base import VisualLayout
from .canvas import window_sums

PixelBox = tuple[int, int, int, int]


def crop_size(image_size: tuple[int, int], ratio: float, min_side: int) -> tuple[int, int]:
    """(width, height) of the crop: `ratio` of each side, at least `min_side`, at most the image."""
    width, height = image_size
    crop_w = min(width, max(round(ratio * width), min_side))
    crop_h = min(height, max(round(ratio * height), min_side))
    return crop_w, crop_h


def best_window(sums: torch.Tensor) -> tuple[int, int]:
    """(row, col) of the window with the most mass; ties go to the window nearest the centre."""
    best = sums.max()
    tied = (sums >= best - 1e-9 * max(1.0, abs(float(best)))).nonzero()
    centre = torch.tensor([(sums.shape[0] - 1) / 2, (sums.shape[1] - 1) / 2], dtype=torch.float64)
    nearest = ((tied.double() - centre) ** 2).sum(dim=1).argmin()
    row, col = tied[nearest].tolist()
    return row, col


def _place(
    heatmap: torch.Tensor, image_size: tuple[int, int], size: tuple[int, int]
) -> tuple[PixelBox, float]:
    """Best window of `size` pixels on the heatmap; returns its pixel box and its mass."""
    width, height = image_size
    can_h, can_w = heatmap.shape
    sx, sy = can_w / width, can_h / height
    win_w = min(can_w, max(1, round(size[0] * sx)))
    win_h = min(can_h, max(1, round(size[1] * sy)))
    sums = window_sums(heatmap, win_h, win_w)
    row, col = best_window(sums)
    x0 = min(max(round(col / sx), 0), width - size[0])
    y0 = min(max(round(row / sy), 0), height - size[1])
    return (x0, y0, x0 + size[0], y0 + size[1]), float(sums[row, col])


def place_crop(
    heatmap: torch.Tensor, image_size: tuple[int, int], ratio: float = 0.5, min_side: int = 224
) -> PixelBox:
    """Con-ViCrop: the crop window holding the most mass of the painted map, clamped in the image.

    heatmap: [h, w] density painted over the whole image (any resolution with the image's aspect).
    Returns (x0, y0, x1, y1) in original pixels.
    """
    box, _ = _place(heatmap, image_size, crop_size(image_size, ratio, min_side))
    return box


def search_grid(layouts: list[VisualLayout], image_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the cell grid ViCrop's windows move on: cells the size (in original pixels) of the
    finest grid among the layouts' segments (boxes already in the whole image's coordinates), tiled over
    the whole image. A single grid over the whole image (LLaVA-1.5 with `crop.geometry: whole`,
    InstructBLIP, Qwen2.5-VL) is its own search grid."""
    width, height = image_size
    best = None
    for layout in layouts:
        for s in layout.segments:
            x0, y0, x1, y1 = s.box
            cell_w, cell_h = (x1 - x0) * width / s.grid[1], (y1 - y0) * height / s.grid[0]
            if best is None or cell_w * cell_h < best[0] * best[1]:
                best = (cell_w, cell_h)
    if best is None:
        return 1, 1
    return max(1, round(height / best[1])), max(1, round(width / best[0]))


def place_multiscale_crop(
    cells: torch.Tensor, image_size: tuple[int, int], base: int, ratios: list[float]
) -> PixelBox:
    """ViCrop's adaptive box (`bbox_from_att_image_adaptive` in its `utils.py`), on `cells`: [rows, cols]
    mass of the map per cell of an equal grid over the whole image.

    For each ratio r, windows of whole cells, as many as fit in `r * base` px (at least one, at most the
    grid), at every cell position; the best window (the first in column-major order on ties) is scored
    by (its mass - the mean mass of the windows one cell left, right, up and down) / its cell count.
    A ratio whose window is the whole grid is skipped (the whole image when every one is). The ratio
    with the highest score wins (the first on ties), and the box is the square of side `r * base`
    (ViCrop's rounding: twice `r * base // 2`) centred on its window, shifted inside the image and
    clipped to it. Returns (x0, y0, x1, y1) in original pixels.
    """
    width, height = image_size
    rows, cols = cells.shape
    cell_w, cell_h = width / cols, height / rows
    cells = cells.double()
    best = None  # (score, ratio, x, y, nx, ny)
    for ratio in ratios:
        nx = max(1, min(int(base * ratio / cell_w), cols))
        ny = max(1, min(int(base * ratio / cell_h), rows))
        if nx >= cols and ny >= rows:
            continue
        sums = cells.unfold(0, ny, 1).unfold(1, nx, 1).sum(dim=(-1, -2))  # [rows - ny + 1, cols - nx + 1]
        flat = int(sums.T.argmax())  # column-major: the first x, then the first y, on ties
        x, y = divmod(flat, sums.shape[0])
        neighbours = [
            sums[y + dy, x + dx]
            for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= x + dx < sums.shape[1] and 0 <= y + dy < sums.shape[0]
        ]
        score = float((sums[y, x] - torch.stack(neighbours).mean()) / (nx * ny))
        if best is None or score > best[0]:
            best = (score, ratio, x, y, nx, ny)
    if best is None:
        return (0, 0, width, height)
    _, ratio, x, y, nx, ny = best
    half = base * ratio // 2
    x_centre = int(x * cell_w + cell_w * nx / 2)
    y_centre = int(y * cell_h + cell_h * ny / 2)
    x_centre = min(max(x_centre, half), width - half)
    y_centre = min(max(y_centre, half), height - half)
    return (
        int(max(0, x_centre - half)), int(max(0, y_centre - half)),
        int(min(width, x_centre + half)), int(min(height, y_centre + half)),
    )


def high_res_tiles(image_size: tuple[int, int], tile_size: int) -> list[PixelBox]:
    """ViCrop's rel_att_high split (`high_res_split_threshold`): ceil(H / tile_size) rows of tiles and
    int(rows * W / H) columns (at least one), tiles of ceil(W / columns) x ceil(H / rows) px, row by
    row, clipped to the image."""
    width, height = image_size
    n_rows = math.ceil(height / tile_size)
    n_cols = max(1, int(n_rows * width / height))
    tile_w, tile_h = math.ceil(width / n_cols), math.ceil(height / n_rows)
    return [
        (i * tile_w, j * tile_h, min(width, (i + 1) * tile_w), min(height, (j + 1) * tile_h))
        for j in range(n_rows)
        for i in range(n_cols)
        if i * tile_w < width and j * tile_h < height
    ]
