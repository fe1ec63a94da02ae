"""Where to zoom: Con-ViCrop window placement and ViCrop's multi-scale windows (docs/method.md)."""

from __future__ import annotations

import torch

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
    canvas: torch.Tensor, image_size: tuple[int, int], size: tuple[int, int]
) -> tuple[PixelBox, float]:
    """Best window of `size` pixels on the density canvas; returns its pixel box and its mass."""
    width, height = image_size
    can_h, can_w = canvas.shape
    sx, sy = can_w / width, can_h / height
    win_w = min(can_w, max(1, round(size[0] * sx)))
    win_h = min(can_h, max(1, round(size[1] * sy)))
    sums = window_sums(canvas, win_h, win_w)
    row, col = best_window(sums)
    x0 = min(max(round(col / sx), 0), width - size[0])
    y0 = min(max(round(row / sy), 0), height - size[1])
    return (x0, y0, x0 + size[0], y0 + size[1]), float(sums[row, col])


def place_crop(
    canvas: torch.Tensor, image_size: tuple[int, int], ratio: float = 0.5, min_side: int = 224
) -> PixelBox:
    """Con-ViCrop: the crop window holding the most mass of the painted map, clamped in the image.

    canvas: [h, w] density painted over the whole image (any resolution with the image's aspect).
    Returns (x0, y0, x1, y1) in original pixels.
    """
    box, _ = _place(canvas, image_size, crop_size(image_size, ratio, min_side))
    return box


def place_multiscale_crop(
    canvas: torch.Tensor, image_size: tuple[int, int], native: int, scales: list[float]
) -> PixelBox:
    """ViCrop-style: square windows of `scale * native` px; keep the scale whose best window stands
    out most from the average window of that scale (mean density inside minus mean over windows)."""
    width, height = image_size
    best_box, best_sharpness = (0, 0, width, height), float("-inf")
    can_h, can_w = canvas.shape
    for scale in scales:
        side = round(native * scale)
        size = (min(side, width), min(side, height))
        if size == (width, height):
            if best_sharpness == float("-inf"):
                best_box = (0, 0, width, height)
            continue
        box, mass = _place(canvas, image_size, size)
        win_w = min(can_w, max(1, round(size[0] * can_w / width)))
        win_h = min(can_h, max(1, round(size[1] * can_h / height)))
        mean_mass = float(window_sums(canvas, win_h, win_w).mean())
        sharpness = (mass - mean_mass) / (win_w * win_h)
        if sharpness > best_sharpness:
            best_box, best_sharpness = box, sharpness
    return best_box
