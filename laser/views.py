"""The images the model answers on: the focused view and the negative (counterfactual) views."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter

from adapters.base import Box, VisualLayout

from .canvas import integral_image, region_mean
from .crop import PixelBox


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """An RGB copy of any PIL image (L, LA, P, RGBA, CMYK, I;16 ...); RGBA is composited on white."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{name} has no pixels ({image.width}x{image.height})")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 0 else 1.0
        return Image.fromarray((array / top * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def crop_view(image: Image.Image, box: PixelBox) -> Image.Image:
    return image.crop(box)


def cell_scores(
    layout: VisualLayout, view_regions: list[Box], table: torch.Tensor
) -> list[tuple[int, Box, float]]:
    """Every patch cell of the focused view with its mean map density.

    view_regions[i]: normalised region of the ORIGINAL image that focused image i shows.
    table: integral image of the map painted on the original. Returns (image_index, normalised cell
    box in focused image i, score) per cell, cells entirely outside their image left out.
    """
    cells = []
    for segment in layout.segments:
        rows, cols = segment.grid
        x0, y0, x1, y1 = segment.box
        rx0, ry0, rx1, ry1 = view_regions[segment.image_index]
        dx, dy = (x1 - x0) / cols, (y1 - y0) / rows
        for r in range(rows):
            for c in range(cols):
                cx0, cy0 = max(x0 + c * dx, 0.0), max(y0 + r * dy, 0.0)
                cx1, cy1 = min(x0 + (c + 1) * dx, 1.0), min(y0 + (r + 1) * dy, 1.0)
                if cx1 <= cx0 or cy1 <= cy0:
                    continue
                region = (
                    rx0 + cx0 * (rx1 - rx0),
                    ry0 + cy0 * (ry1 - ry0),
                    rx0 + cx1 * (rx1 - rx0),
                    ry0 + cy1 * (ry1 - ry0),
                )
                cells.append((segment.image_index, (cx0, cy0, cx1, cy1), region_mean(table, region)))
    return cells


def _fill(image: Image.Image, box: tuple[int, int, int, int], fill: str, generator: torch.Generator) -> None:
    width, height = box[2] - box[0], box[3] - box[1]
    if fill == "mean":
        mean = tuple(int(round(v)) for v in np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0))
        patch = Image.new("RGB", (width, height), mean)
    elif fill == "blur":
        patch = image.filter(ImageFilter.GaussianBlur(radius=max(2, max(width, height) // 2))).crop(box)
    elif fill == "noise":
        values = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        patch = Image.fromarray(values.numpy())
    else:
        raise ValueError(f"counterfactual.fill={fill!r}; expected mean, blur or noise")
    image.paste(patch, box[:2])


def counterfactual_views(
    images: list[Image.Image],
    layout: VisualLayout,
    view_regions: list[Box],
    map_canvas: torch.Tensor,
    mask_ratio: float,
    fill: str,
    generator: torch.Generator,
) -> tuple[list[Image.Image], list[tuple[int, Box]]]:
    """Mask the top `mask_ratio` of the focused view's patch cells ranked by the map.

    Returns the masked copies of the focused images and the masked cells (image index, normalised box).
    """
    table = integral_image(map_canvas)
    cells = cell_scores(layout, view_regions, table)
    count = min(len(cells), math.ceil(mask_ratio * len(cells))) if mask_ratio > 0 else 0
    order = sorted(range(len(cells)), key=lambda i: (-cells[i][2], i))[:count]
    masked = [im.copy() for im in images]
    chosen = []
    for i in order:
        index, (x0, y0, x1, y1), _ = cells[i]
        im = masked[index]
        px = (
            int(math.floor(x0 * im.width)),
            int(math.floor(y0 * im.height)),
            max(int(math.ceil(x1 * im.width)), int(math.floor(x0 * im.width)) + 1),
            max(int(math.ceil(y1 * im.height)), int(math.floor(y0 * im.height)) + 1),
        )
        _fill(im, px, fill, generator)
        chosen.append((index, (x0, y0, x1, y1)))
    return masked, chosen


def diffusion_noise_view(
    image: Image.Image, step: int, steps: int, generator: torch.Generator
) -> Image.Image:
    """VCD's negative view: forward diffusion to step `step` of `steps` (sigmoid beta schedule),
    applied to the image scaled to [-1, 1] and mapped back to 8-bit."""
    if not 0 <= step < steps:
        raise ValueError(f"counterfactual.noise_step={step}; expected 0 <= step < {steps}")
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    alpha_bar = torch.cumprod(1 - betas, dim=0)[step]
    x = torch.from_numpy(np.asarray(image, dtype=np.float64) / 127.5 - 1.0)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    noisy = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise
    return Image.fromarray(((noisy.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
