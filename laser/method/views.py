"""The images the model answers on: the focused view and the negative (counterfactual) views."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image, ImageFilter
from transformers import BatchFeature

from ..adapters.base import Box, VisualLayout
from .canvas import integral_image
from .crop import PixelBox

BLUR_MIN_RADIUS = 2
"""`counterfactual.fill: blur`: the Gaussian radius is half the masked cell's longer side, at least this (px)."""
NOISE_BETA_START, NOISE_BETA_END = 1e-5, 0.5e-2
NOISE_SIGMOID_SPAN = 6.0
"""VCD's sigmoid beta schedule: beta_t = sigmoid(linspace(-span, span, steps))_t * (end - start) + start."""


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
    height, width = table.shape[0] - 1, table.shape[1] - 1
    cells = []
    for segment in layout.segments:
        rows, cols = segment.grid
        x0, y0, x1, y1 = segment.box
        rx0, ry0, rx1, ry1 = view_regions[segment.image_index]
        dx, dy = (x1 - x0) / cols, (y1 - y0) / rows
        # every cell of the grid at once, with the same float64 operations as one cell at a time
        c = torch.arange(cols, dtype=torch.float64)
        r = torch.arange(rows, dtype=torch.float64)
        cx0, cx1 = (x0 + c * dx).clamp(min=0.0), (x0 + (c + 1) * dx).clamp(max=1.0)
        cy0, cy1 = (y0 + r * dy).clamp(min=0.0), (y0 + (r + 1) * dy).clamp(max=1.0)
        col_ok, row_ok = (cx1 > cx0).tolist(), (cy1 > cy0).tolist()
        # region of the original image each cell shows, then its mean from the integral image
        gx0, gx1 = rx0 + cx0 * (rx1 - rx0), rx0 + cx1 * (rx1 - rx0)
        gy0, gy1 = ry0 + cy0 * (ry1 - ry0), ry0 + cy1 * (ry1 - ry0)
        c0 = torch.floor(gx0 * width).clamp(0, width - 1)
        r0 = torch.floor(gy0 * height).clamp(0, height - 1)
        c1 = torch.maximum(torch.ceil(gx1 * width), c0 + 1).clamp(max=width)
        r1 = torch.maximum(torch.ceil(gy1 * height), r0 + 1).clamp(max=height)
        c0, c1, r0, r1 = c0.long(), c1.long(), r0.long(), r1.long()
        total = (
            table[r1[:, None], c1[None, :]] - table[r0[:, None], c1[None, :]]
            - table[r1[:, None], c0[None, :]] + table[r0[:, None], c0[None, :]]
        )
        means = (total / ((r1 - r0)[:, None] * (c1 - c0)[None, :]).double()).tolist()
        cx0, cx1, cy0, cy1 = cx0.tolist(), cx1.tolist(), cy0.tolist(), cy1.tolist()
        for i in range(rows):
            if not row_ok[i]:
                continue
            for j in range(cols):
                if col_ok[j]:
                    cells.append((segment.image_index, (cx0[j], cy0[i], cx1[j], cy1[i]), means[i][j]))
    return cells


class _ChannelSums:
    """Exact per-channel pixel sums of an RGB image, kept up to date across pastes, so the mean fill
    of every cell does not re-read the whole image (the same means as `np.mean`: integer sums are
    exact in float64)."""

    def __init__(self, image: Image.Image):
        self.count = image.width * image.height
        self.sums = np.asarray(image, dtype=np.int64).reshape(-1, 3).sum(0)

    def mean(self) -> np.ndarray:
        return self.sums.astype(np.float64) / self.count

    def replace(self, image: Image.Image, box: tuple[int, int, int, int], value: tuple[int, int, int]) -> None:
        """Account for `box` of `image` (not pasted yet) becoming `value`."""
        area = (box[2] - box[0]) * (box[3] - box[1])
        self.sums += np.asarray(value, dtype=np.int64) * area - np.asarray(image.crop(box), dtype=np.int64).reshape(-1, 3).sum(0)


def _fill(
    image: Image.Image,
    box: tuple[int, int, int, int],
    fill: str,
    generator: torch.Generator,
    sums: _ChannelSums | None = None,
) -> None:
    width, height = box[2] - box[0], box[3] - box[1]
    if fill == "mean":
        if sums is None:
            sums = _ChannelSums(image)
        mean = tuple(int(round(v)) for v in sums.mean())
        sums.replace(image, box, mean)
        patch = Image.new("RGB", (width, height), mean)
    elif fill == "blur":
        patch = image.filter(ImageFilter.GaussianBlur(radius=max(BLUR_MIN_RADIUS, max(width, height) // 2))).crop(box)
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
    sums = [_ChannelSums(im) if fill == "mean" and count else None for im in masked]
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
        _fill(im, px, fill, generator, sums[index])
        chosen.append((index, (x0, y0, x1, y1)))
    return masked, chosen


def diffusion_alpha_bar(step: int, steps: int) -> float:
    """alpha_bar_t of VCD's forward diffusion at `step` (0-based) of `steps`: betas on a sigmoid schedule
    from 1e-5 to 5e-3, alpha_bar_t = prod_{s <= t} (1 - beta_s)."""
    if not 0 <= step < steps:
        raise ValueError(f"counterfactual.noise_step={step}; expected 0 <= step < {steps}")
    ramp = torch.linspace(-NOISE_SIGMOID_SPAN, NOISE_SIGMOID_SPAN, steps, dtype=torch.float64)
    betas = torch.sigmoid(ramp) * (NOISE_BETA_END - NOISE_BETA_START) + NOISE_BETA_START
    return float(torch.cumprod(1 - betas, dim=0)[step])


def _unit_generator(seed: int, index: tuple[int, ...]) -> torch.Generator:
    digest = hashlib.blake2b(repr((int(seed), index)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def diffusion_noise_pixels(
    pixels: torch.Tensor, rows: list[int], seeds: list[int], step: int, steps: int
) -> torch.Tensor:
    """VCD's negative view on a processed, normalised pixel tensor (the model's own input):
    `sqrt(alpha_bar_t) x + sqrt(1 - alpha_bar_t) eps`, eps ~ N(0, 1), unclamped — the noise the model
    sees has std `sqrt(1 - alpha_bar_t)` in normalised units whatever the photo's size.

    pixels: [R, ...], its first rows[0] rows sample 0's, the next rows[1] sample 1's, ...
    seeds: one per sample. eps is drawn per image unit (each trailing [C, H, W] block of a tensor of 4+
    dims, else a sample's whole slice) from a generator seeded by (seed, the unit's index in the sample),
    so a sample's noise does not depend on its batch or on the batch's padding; units that are all
    zero (a processor's padding images or tiles) stay zero.
    """
    if len(rows) != len(seeds) or sum(rows) != pixels.shape[0]:
        raise ValueError(f"pixel tensor of {pixels.shape[0]} rows for samples of {rows} rows and {len(seeds)} seeds")
    alpha_bar = diffusion_alpha_bar(step, steps)
    keep, spread = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    out = pixels.clone()
    start = 0
    for count, seed in zip(rows, seeds):
        part = out[start : start + count]
        start += count
        leading = part.shape[:-3] if part.ndim >= 4 else ()
        for index in np.ndindex(*leading) if leading else [()]:
            unit = part[index] if index else part
            if not bool(unit.any()):
                continue
            noise = torch.randn(unit.shape, generator=_unit_generator(seed, index), dtype=torch.float32)
            unit.copy_(keep * unit.float() + spread * noise)
    return out


def diffusion_noise_inputs(
    inputs: BatchFeature, pixel_rows: dict[str, list[int]], seeds: list[int], step: int, steps: int
) -> BatchFeature:
    """A copy of `inputs` whose pixel tensors (`pixel_rows`: key -> rows per sample, from the adapter)
    carry VCD's diffusion noise; everything else is shared with `inputs`."""
    if not pixel_rows:
        raise ValueError("counterfactual.view=noise: the adapter reports no pixel tensor in its inputs")
    noisy = dict(inputs)
    for key, rows in pixel_rows.items():
        noisy[key] = diffusion_noise_pixels(inputs[key], rows, seeds, step, steps)
    return BatchFeature(noisy)


def stack_streams(first: BatchFeature, second: BatchFeature) -> BatchFeature:
    """Two input batches of the same prompts (same padded length) as one batch, `first`'s samples then
    `second`'s: tensors concatenated along dim 0 (every input tensor lists its samples' rows in
    order there), lists appended."""
    out = {}
    for key, value in first.items():
        other = second[key]
        if isinstance(value, torch.Tensor):
            if value.shape[1:] != other.shape[1:]:
                raise ValueError(f"stack_streams: {key} of shape {tuple(value.shape)} and {tuple(other.shape)}")
            out[key] = torch.cat([value, other])
        elif isinstance(value, list):
            out[key] = value + other
        else:
            raise ValueError(f"stack_streams: cannot stack input {key!r} of type {type(value).__name__}")
    return BatchFeature(out)
