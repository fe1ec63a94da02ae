"""The images the model answers on: the focused view and the negative (counterfactual) views."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature

from ..adapters.base import Box, PixelView, VisualLayout
from .canvas import integral_image
from .crop import PixelBox

BLUR_MIN_RADIUS = 2
"""`counterfactual.fill: blur`: the Gaussian's standard deviation is half the filled rect's longer side, at least
this (processed px)."""
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


def ranked_cells(
    layout: VisualLayout, view_regions: list[Box], heatmap: torch.Tensor, mask_ratio: float
) -> list[tuple[int, Box]]:
    """The top `mask_ratio` of the focused view's patch cells (`cell_scores`; ties in layout order), best
    first: (image index, normalised box in that focused image) each."""
    cells = cell_scores(layout, view_regions, integral_image(heatmap))
    count = min(len(cells), math.ceil(mask_ratio * len(cells))) if mask_ratio > 0 else 0
    order = sorted(range(len(cells)), key=lambda i: (-cells[i][2], i))[:count]
    return [(cells[i][0], cells[i][1]) for i in order]


_EDGE_EPS = 1e-6  # a cell edge computed in float64 that lands within this of a pixel edge is that edge


def view_rect(view: PixelView, box: Box) -> tuple[int, int, int, int] | None:
    """Pixels (x0, y0, x1, y1) of `view.pixels` ([C, H, W]) that show `box` (normalised, of the view's
    image): edges rounded outwards, at least one pixel; None if the view does not show the box."""
    height, width = view.pixels.shape[-2:]
    vx0, vy0, vx1, vy1 = view.box
    x0, y0, x1, y1 = box
    u0, u1 = (x0 - vx0) / (vx1 - vx0) * width, (x1 - vx0) / (vx1 - vx0) * width
    v0, v1 = (y0 - vy0) / (vy1 - vy0) * height, (y1 - vy0) / (vy1 - vy0) * height
    if u1 <= _EDGE_EPS or v1 <= _EDGE_EPS or u0 >= width - _EDGE_EPS or v0 >= height - _EDGE_EPS:
        return None
    px0 = min(max(math.floor(u0 + _EDGE_EPS), 0), width - 1)
    py0 = min(max(math.floor(v0 + _EDGE_EPS), 0), height - 1)
    px1 = max(min(math.ceil(u1 - _EDGE_EPS), width), px0 + 1)
    py1 = max(min(math.ceil(v1 - _EDGE_EPS), height), py0 + 1)
    return px0, py0, px1, py1


def image_means(views: list[PixelView]) -> dict[int, torch.Tensor]:
    """Per image index, the per-channel mean [C] of its processed pixels: over every view's pixels that
    show the image (padding left out), weighted by pixel count."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for view in views:
        rect = view_rect(view, (0.0, 0.0, 1.0, 1.0))
        if rect is None:
            continue
        x0, y0, x1, y1 = rect
        part = view.pixels[:, y0:y1, x0:x1].double()
        sums[view.image_index] = sums.get(view.image_index, 0) + part.sum(dim=(1, 2))
        counts[view.image_index] = counts.get(view.image_index, 0) + part.shape[1] * part.shape[2]
    return {i: (sums[i] / counts[i]).float() for i in sums}


def gaussian_blur_rect(pixels: torch.Tensor, rect: tuple[int, int, int, int], sigma: float) -> torch.Tensor:
    """`rect` (x0, y0, x1, y1) of `pixels` [C, H, W] after a Gaussian blur of standard deviation `sigma`
    (px) of the whole image, edges extended: [C, y1 - y0, x1 - x0]. Only the rect's neighbourhood is read."""
    x0, y0, x1, y1 = rect
    height, width = pixels.shape[-2:]
    reach = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-reach, reach + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(torch.float32)
    wx0, wy0, wx1, wy1 = max(x0 - reach, 0), max(y0 - reach, 0), min(x1 + reach, width), min(y1 + reach, height)
    window = pixels[:, wy0:wy1, wx0:wx1].float()[None]
    pad = (wx0 - (x0 - reach), (x1 + reach) - wx1, wy0 - (y0 - reach), (y1 + reach) - wy1)
    window = F.pad(window, pad, mode="replicate")
    channels = window.shape[1]
    window = F.conv2d(window, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    window = F.conv2d(window, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return window[0].to(pixels.dtype)


def fill_cells(
    views: list[PixelView],
    cells: list[tuple[int, Box]],
    fill: str,
    transform: tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator,
) -> None:
    """LASER's masked view on processed pixels: every view showing a cell (image index, normalised
    box) gets the cell's pixels filled, in `cells` order (docs/method.md, Views), then is committed.

    fill: `mean` — the image's per-channel mean of processed pixels (`image_means`, before any fill);
    `noise` — uniform pixel values 0..255 drawn from `generator` ([h, w, C] per cell and view, in order)
    and mapped through the processor's `transform` (scale, offset per channel); `blur` — a Gaussian blur
    of the view (standard deviation half the filled rect's longer side, at least `BLUR_MIN_RADIUS` px).
    """
    if fill not in ("mean", "blur", "noise"):
        raise ValueError(f"counterfactual.fill={fill!r}; expected mean, blur or noise")
    means = image_means(views) if fill == "mean" and cells else {}
    scale, offset = (t.float() for t in transform)
    for index, box in cells:
        for view in views:
            rect = view_rect(view, box) if view.image_index == index else None
            if rect is None:
                continue
            x0, y0, x1, y1 = rect
            target = view.pixels[:, y0:y1, x0:x1]
            if fill == "mean":
                target.copy_(means[index].to(target.dtype)[:, None, None].expand_as(target))
            elif fill == "noise":
                values = torch.randint(0, 256, (y1 - y0, x1 - x0, target.shape[0]), generator=generator)
                target.copy_((values.float() * scale + offset).permute(2, 0, 1))
            else:
                sigma = max(BLUR_MIN_RADIUS, max(x1 - x0, y1 - y0) // 2)
                target.copy_(gaussian_blur_rect(view.pixels, rect, sigma))
    for view in views:
        view.commit()


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


def trim_padding(inputs: dict) -> dict:
    """`inputs` without the columns that are padding in every row: for each 2-D padding mask
    (`attention_mask`, or `<p>attention_mask` such as `qformer_attention_mask`), its leading and trailing
    columns that are 0 in every row are cut from the mask and from every tensor named `<p>...` whose first
    two dims are the mask's (`input_ids`, `token_type_ids`, `mm_token_type_ids` ...); a tensor goes with
    the mask of the longest prefix it matches. So left and right padding alike."""
    suffix = "attention_mask"
    masks = {
        key[: -len(suffix)]: value for key, value in inputs.items()
        if key.endswith(suffix) and isinstance(value, torch.Tensor) and value.ndim == 2
    }
    spans = {}
    for prefix, mask in masks.items():
        used = mask.bool().any(dim=0).nonzero().flatten().tolist()
        if used and (used[0] > 0 or used[-1] < mask.shape[1] - 1):
            spans[prefix] = (used[0], used[-1] + 1)
    if not spans:
        return dict(inputs)
    out = {}
    for key, value in inputs.items():
        owners = [
            p for p in masks
            if key.startswith(p) and isinstance(value, torch.Tensor) and value.shape[:2] == masks[p].shape
        ]
        owner = max(owners, key=len) if owners else None
        if owner in spans:
            start, end = spans[owner]
            value = value[:, start:end]
        out[key] = value
    return out


def take_samples(inputs: BatchFeature, rows: dict[str, list[int]], indices: Sequence[int]) -> BatchFeature:
    """Samples `indices` of a batch, in that order, as a batch of their own: the inverse of joining prompts
    into one processor call (e.g. VAQ's with- and without-question prompts of the same images).

    rows: how many leading rows of each input belong to each sample (`adapter.sample_rows(inputs)`); inputs
    not listed are shared and kept whole. A run of consecutive samples is a view of `inputs`' tensors, other
    selections a copy. Columns that are padding in every chosen row are then cut (`trim_padding`), so the
    result equals a processor call on those samples alone wherever the processor pads only to the batch's
    longest sequence; padding along other dims (images, tiles) stays as the whole batch had it.
    """
    indices = list(indices)
    if not indices:
        raise ValueError("take_samples: no sample indices")
    out = {}
    for key, value in inputs.items():
        counts = rows.get(key)
        if counts is None:
            out[key] = value
            continue
        if any(not 0 <= i < len(counts) for i in indices):
            raise ValueError(f"take_samples: indices {indices} outside the {len(counts)} samples of {key!r}")
        starts = [0]
        for count in counts:
            starts.append(starts[-1] + count)
        spans = [(starts[i], starts[i + 1]) for i in indices]
        if isinstance(value, list):
            out[key] = [item for start, end in spans for item in value[start:end]]
        elif all(end == spans[j + 1][0] for j, (_, end) in enumerate(spans[:-1])):
            out[key] = value[spans[0][0] : spans[-1][1]]
        else:
            out[key] = torch.cat([value[start:end] for start, end in spans])
    return BatchFeature(trim_padding(out))
