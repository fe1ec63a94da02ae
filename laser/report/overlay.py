"""`render_overlay`: one sample in one PNG (used by `laser show` and the demo).

Panels: the image with the localisation map M of the chosen layer, the crop box and the counterfactual
mask cells; M alone with a colour bar; the focused view (the crop) with the mask; VAQ[l] per layer with l*
highlighted and the decode gate marked; the question and the answers of vanilla and the method.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.cm  # noqa: E402
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from ..records.metrics import exact_match  # noqa: E402

DPI = 100
BOX_COLOUR = "#39ff14"
MASK_COLOUR = "#00e5ff"
CHOSEN_COLOUR = "#d62728"
Box = tuple[float, float, float, float]


def focused_regions(box: Sequence[int] | None, size: tuple[int, int], crop_input: str = "crop") -> list[Box]:
    """Normalised region of the original image that each focused image shows (as the engine builds
    them): the crop alone, original + crop (`crop_input="both"`), or the original without a box."""
    if box is None:
        return [(0.0, 0.0, 1.0, 1.0)]
    width, height = size
    crop = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    return [(0.0, 0.0, 1.0, 1.0), crop] if crop_input == "both" else [crop]


def mask_boxes(
    masked_cells: Sequence[Any] | None, regions: Sequence[Box], size: tuple[int, int]
) -> list[tuple[float, float, float, float]]:
    """The masked cells (image index, normalised box in that focused image) in original pixels."""
    width, height = size
    out = []
    for index, (x0, y0, x1, y1) in masked_cells or []:
        if not 0 <= int(index) < len(regions):
            continue
        rx0, ry0, rx1, ry1 = regions[int(index)]
        out.append(
            (
                (rx0 + x0 * (rx1 - rx0)) * width,
                (ry0 + y0 * (ry1 - ry0)) * height,
                (rx0 + x1 * (rx1 - rx0)) * width,
                (ry0 + y1 * (ry1 - ry0)) * height,
            )
        )
    return out


def _heat_rgba(heatmap: Any) -> np.ndarray | None:
    """The map as an RGBA layer: colour and opacity both grow with the density (max = 1)."""
    if heatmap is None:
        return None
    values = np.asarray(
        heatmap.detach().float().cpu() if hasattr(heatmap, "detach") else heatmap, dtype=float
    )
    top = values.max() if values.size else 0.0
    if not np.isfinite(top) or top <= 0:
        return None
    norm = np.clip(values / top, 0, 1)
    rgba = plt.get_cmap("turbo")(norm)
    rgba[..., 3] = 0.15 + 0.7 * norm**0.8
    return rgba


def _draw_boxes(ax, rects, colour: str, *, fill: bool = False, lw: float = 1.2) -> None:
    for x0, y0, x1, y1 in rects:
        face = matplotlib.colors.to_rgba(colour, 0.35) if fill else "none"
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=face, edgecolor=colour, lw=lw))


def _pixel_axes(ax, width: int, height: int) -> None:
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.tick_params(labelsize=8)


def _image_panel(ax, image: Image.Image, prediction: Any, masks) -> None:
    """The original in colour with the crop box and the counterfactual mask cells."""
    width, height = image.size
    ax.imshow(image, extent=(0, width, height, 0))
    handles = []
    if prediction.box is not None:
        _draw_boxes(ax, [prediction.box], BOX_COLOUR, lw=2.5)
        handles.append(Patch(facecolor="none", edgecolor=BOX_COLOUR, lw=2.5, label="crop box"))
    if masks:
        _draw_boxes(ax, masks, MASK_COLOUR, fill=True)
        handles.append(
            Patch(
                facecolor=matplotlib.colors.to_rgba(MASK_COLOUR, 0.35),
                edgecolor=MASK_COLOUR,
                label=f"counterfactual mask ({len(masks)} cells)",
            )
        )
    _pixel_axes(ax, width, height)
    ax.set_title(f"Image ({width}x{height} px): crop and mask")
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.06),
            ncol=len(handles),
            frameon=False,
            fontsize=9,
        )


def _map_panel(ax, fig, image: Image.Image, prediction: Any, heat) -> None:
    """The map M over a greyscale copy of the image (so every colour is the map's), with a colour bar."""
    width, height = image.size
    if heat is None:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no localisation map:\nthe method does not select a layer",
            ha="center",
            va="center",
            color="grey",
        )
        return
    ax.imshow(image.convert("L"), extent=(0, width, height, 0), cmap="gray", vmin=-60, vmax=300)
    ax.imshow(heat, extent=(0, width, height, 0), interpolation="nearest")
    if prediction.box is not None:
        _draw_boxes(ax, [prediction.box], BOX_COLOUR, lw=2.0)
    _pixel_axes(ax, width, height)
    ax.set_title(f"Map M of layer l* = {prediction.layer} (image in grey)")
    scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="turbo")
    bar = fig.colorbar(scale, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("map density / its maximum", fontsize=9)
    bar.ax.tick_params(labelsize=8)


def _crop_panel(ax, image: Image.Image, prediction: Any, masks) -> None:
    if prediction.box is None:
        ax.axis("off")
        ax.text(
            0.5, 0.5, "no crop:\nthe model saw the original image", ha="center", va="center", color="grey"
        )
        return
    x0, y0, x1, y1 = prediction.box
    ax.imshow(image.crop((x0, y0, x1, y1)), extent=(x0, x1, y1, y0))
    inside = [m for m in masks if m[0] < x1 and m[2] > x0 and m[1] < y1 and m[3] > y0]
    _draw_boxes(ax, inside, MASK_COLOUR, fill=True)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_title(f"Focused view: crop, {x1 - x0}x{y1 - y0} px")
    ax.tick_params(labelsize=8)


def _wrap(text: str, width: int) -> str:
    """Wrap each line on its own (a multiple-choice question keeps one option per line)."""
    return "\n".join(textwrap.fill(line, width) or "" for line in str(text).splitlines()) or str(text)


def _verdict(answer: str, answers: Sequence[str] | None) -> str:
    if not answers:
        return ""
    return "  [correct]" if exact_match(answer, answers) else "  [wrong]"


def _text_panel(ax, prediction: Any, vanilla_answer: str | None, question, answers, num_layers: int) -> None:
    ax.axis("off")
    wrap = 46
    blocks = []
    if question:
        blocks.append(("Question", _wrap(str(question), wrap), "black"))
    if answers:
        blocks.append(
            (
                "Reference (correct = exact match)",
                _wrap(", ".join(dict.fromkeys(map(str, answers))), wrap),
                "black",
            )
        )
    if vanilla_answer is not None:
        blocks.append(
            (
                "Vanilla" + _verdict(vanilla_answer, answers),
                _wrap(vanilla_answer or "(empty)", wrap),
                "#555555",
            )
        )
    method = prediction.method or "method"
    blocks.append(
        (
            f"{method}" + _verdict(prediction.answer, answers),
            _wrap(prediction.answer or "(empty)", wrap),
            CHOSEN_COLOUR,
        )
    )
    facts = [f"decode path: {prediction.path}"]
    if prediction.layer is not None:
        facts.append(
            f"chosen layer l* = {prediction.layer} of {num_layers} (l*/L = {prediction.layer / num_layers:.2f})"
        )
    if prediction.box is not None:
        facts.append("crop box: ({}, {}) - ({}, {})".format(*prediction.box))
    if getattr(prediction, "fallback", None):
        facts.append(_wrap(f"fallback: {prediction.fallback}", wrap))
    blocks.append(("Details", "\n".join(facts), "black"))
    anchor = None
    for title, body, colour in blocks:  # each text hangs below the previous one, whatever its height
        for text, weight, gap in ((title, "bold", 10), (body, "normal", 2)):
            if anchor is None:
                anchor = ax.text(
                    0.0, 1.0, text, transform=ax.transAxes, va="top", fontweight=weight, color=colour
                )
            else:
                anchor = ax.annotate(
                    text,
                    xy=(0, 0),
                    xycoords=anchor,
                    xytext=(0, -gap),
                    textcoords="offset points",
                    va="top",
                    fontweight=weight,
                    color=colour,
                )


def _vaq_panel(ax, prediction: Any, num_layers: int, gate_depth: float | None) -> None:
    if not prediction.vaq:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"no VAQ: {prediction.method or 'this method'} does not select a layer",
            ha="center",
            va="center",
            color="grey",
        )
        return
    vaq = np.asarray(prediction.vaq, dtype=float)
    layers = np.arange(len(vaq))
    colours = ["#9bb7d4"] * len(vaq)
    if prediction.layer is not None and 0 <= prediction.layer < len(vaq):
        colours[prediction.layer] = CHOSEN_COLOUR
    ax.bar(layers, vaq, color=colours, width=0.8, zorder=2)
    handles = [
        Patch(color="#9bb7d4", label="VAQ[l]"),
        Patch(color=CHOSEN_COLOUR, label=f"chosen l* = {prediction.layer}"),
    ]
    if gate_depth is not None:
        edge = gate_depth * num_layers - 0.5
        ax.axvspan(edge, len(vaq) - 0.5, color="#ff7f0e", alpha=0.1, zorder=0)
        handles.append(
            Patch(color="#ff7f0e", alpha=0.25, label=f"contrastive decoding if l*/L ≥ {gate_depth:g}")
        )
    ax.set_xlim(-0.6, len(vaq) - 0.4)
    ax.set_xticks(layers if len(vaq) <= 40 else layers[:: max(1, len(vaq) // 20)])
    ax.set_xlabel(f"decoder layer l  (L = {num_layers})")
    ax.set_ylabel("VAQ[l]")
    ax.set_title("VAQ (visual activation by query) per layer")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", frameon=False, fontsize=9)


@dataclass(frozen=True)
class OverlaySample:
    """One sample as `render_overlay` draws it.

    `prediction` is a `laser.method.prediction.Prediction` (made with `save_heatmap=True` for the map);
    `vanilla_answer` the plain model's answer (None to leave it out); `answers` (reference answers) add a
    correct/wrong tag (exact match after VQA normalisation) next to each answer."""

    image: Image.Image
    prediction: Any
    vanilla_answer: str | None = None
    question: str | None = None
    answers: Sequence[str] | None = None


def render_overlay(
    sample: OverlaySample, path: str | Path, num_layers: int, method: Any = None, title: str | None = None
) -> Path:
    """Draw one sample into `path` (PNG) and return the path.

    `num_layers` is the model's decoder depth L; `method` the `LaserConfig` that made the prediction:
    its `crop.input` tells how the focused input was built (to place the mask cells), and with
    `decode.mode=auto` the gate depth is marked on the VAQ chart (None: a crop-only input, no gate).
    """
    crop_input = method.crop.input if method is not None else "crop"
    gate_depth = method.gate.depth if method is not None and method.decode.mode == "auto" else None
    image, prediction, question, answers = sample.image, sample.prediction, sample.question, sample.answers
    vanilla_answer, adapter_num_layers = sample.vanilla_answer, num_layers
    path = Path(path)
    image = image.convert("RGB")
    regions = focused_regions(prediction.box, image.size, crop_input)
    masks = mask_boxes(prediction.masked_cells, regions, image.size)
    with plt.rc_context(
        {"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False}
    ):
        fig = plt.figure(figsize=(16, 10))
        grid = fig.add_gridspec(
            2, 3, width_ratios=[1.0, 1.0, 1.0], height_ratios=[1.35, 1.0], hspace=0.22, wspace=0.25, top=0.93
        )
        _image_panel(fig.add_subplot(grid[0, 0]), image, prediction, masks)
        _map_panel(fig.add_subplot(grid[0, 1]), fig, image, prediction, _heat_rgba(prediction.heatmap))
        _crop_panel(fig.add_subplot(grid[0, 2]), image, prediction, masks)
        _vaq_panel(fig.add_subplot(grid[1, :2]), prediction, adapter_num_layers, gate_depth)
        _text_panel(
            fig.add_subplot(grid[1, 2]), prediction, vanilla_answer, question, answers, adapter_num_layers
        )
        fig.suptitle(title or f"LASER: {prediction.method or 'method'} vs vanilla", fontsize=13)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
    return path
