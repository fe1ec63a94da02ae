"""The adapter contract: what the engine needs to know about one LVLM family.

An adapter declares where things are (image-token spans, the patch grid, the decoder layers and
how prompts are written); it never re-implements the model. The engine knows nothing model-specific.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from ..compat import cache_kwarg

Box = tuple[float, float, float, float]

DEFAULT_INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class VisualSegment:
    """One grid of visual tokens.

    positions: token positions of the grid in the (padded) input sequence, row-major, length rows*cols
        (newline / separator tokens excluded).
    grid: (rows, cols).
    box: normalised (x0, y0, x1, y1) region of image `image_index` that the grid covers; may extend
        outside [0, 1] when the processor pads the image.
    """

    image_index: int
    positions: torch.Tensor
    grid: tuple[int, int]
    box: Box

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if self.positions.numel() != rows * cols:
            raise ValueError(
                f"VisualSegment: {self.positions.numel()} positions for a {rows}x{cols} grid"
            )


@dataclass(frozen=True)
class VisualLayout:
    """The visual tokens of one sample: its segments, in sequence order."""

    segments: list[VisualSegment]
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per image

    @property
    def positions(self) -> torch.Tensor:
        """All visual token positions, concatenated over segments: [n_visual]."""
        return torch.cat([s.positions for s in self.segments])

    @property
    def n_visual(self) -> int:
        return sum(s.positions.numel() for s in self.segments)

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Split per-token values [..., n_visual] into per-segment grids [..., rows, cols]."""
        out, start = [], 0
        for s in self.segments:
            n = s.positions.numel()
            out.append(values[..., start : start + n].reshape(*values.shape[:-1], *s.grid))
            start += n
        return out


@dataclass
class PixelView:
    """One image of a sample as the vision tower reads it: processed, normalised pixels.

    pixels: [C, H, W], a view into the inputs' pixel tensor (writes land there), or a copy that
        `write_back()` puts back (families whose tensor is not laid out as images, e.g. flattened patches).
    box: normalised (x0, y0, x1, y1) region of image `image_index` that `pixels` shows (may extend
        outside [0, 1] where the processor padded the image).
    """

    image_index: int
    box: Box
    pixels: torch.Tensor
    write_back: Callable[[], None] | None = None

    def commit(self) -> None:
        """Make edits of `pixels` part of the inputs (a no-op for a view)."""
        if self.write_back is not None:
            self.write_back()


ImageInput = Image.Image | list[Image.Image]


class VisionLanguageAdapter(ABC):
    """Where things are in one LVLM family.

    Subclasses set the class attributes and implement `build_inputs`, `decoder_layers` and
    `visual_layout`; everything else has a generic default that most families keep.
    """

    name: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    default_layer: ClassVar[int] = 14
    # depth of the reference model `default_layer` was chosen on; rescaled for other depths
    reference_num_layers: ClassVar[int] = 32
    native_resolution: ClassVar[int] = 336
    # side (px) of ViCrop's base crop box (`crop.strategy: multiscale`); None = `native_resolution`.
    # ViCrop's code: 336 for LLaVA-1.5, 224 for InstructBLIP and Qwen2.5-VL.
    crop_box_side: ClassVar[int | None] = None
    supports_multi_image: ClassVar[bool] = True
    # whether the attention pass without the question may reuse the KV cache of the prompt prefix it
    # shares with the pass with it (`prefix_reuse`); False where the visual tokens depend on the
    # question (Q-Former families, PaliGemma's two-way prefix), or where the reused cache is not exact
    # (Gemma 3's sliding-window layers).
    supports_prefix_reuse: ClassVar[bool] = True

    def __init__(self, model: nn.Module, processor: Any, instruction: str = DEFAULT_INSTRUCTION):
        self.model = model
        self.processor = processor
        self.instruction = instruction

    # ----------------------------------------------------------------- loading
    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str, **load_kwargs: Any) -> VisionLanguageAdapter:
        """Load the family's model and processor from a local folder or hub id."""

    # ----------------------------------------------------------------- prompts and inputs
    @abstractmethod
    def build_inputs(
        self,
        images: list[ImageInput],
        questions: list[str | None],
        *,
        with_question: bool = True,
    ) -> BatchFeature:
        """Left-padded model inputs for a batch, in one processor call. A question of None gives that
        sample's prompt without the question text (the answer instruction kept), so one batch may mix
        prompts with and without their question; `with_question=False` is the shorthand for all None.
        `questions` may hold a replacement prompt (ViCrop's generic one)."""

    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers."""

    @abstractmethod
    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        """Segments of visual tokens of sample `index` of `inputs`."""

    def attention_modules(self) -> list[nn.Module]:
        """The language model's self-attention module of each decoder layer, in layer order."""
        return [layer.self_attn for layer in self.decoder_layers()]

    def language_config(self) -> Any:
        return self.attention_modules()[0].config

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def num_heads(self) -> int:
        return int(self.language_config().num_attention_heads)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def eos_token_ids(self) -> list[int]:
        ids = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update(source if isinstance(source, (list, tuple)) else [source])
        return sorted(ids)

    def probe_positions(self, inputs: BatchFeature, index: int) -> torch.Tensor:
        """Token positions whose last-row attention the probe reads for sample `index`: [n_probe].

        Default: the layout's visual token positions. A family whose map is chained through another
        attention (a Q-Former) returns the tokens the chain starts from (its query tokens) and maps
        rows over them onto its layout's cells in `project_rows`.
        """
        return self.visual_layout(inputs, index).positions

    def project_rows(
        self, rows: torch.Tensor, inputs: BatchFeature, layouts: list[VisualLayout]
    ) -> torch.Tensor:
        """Attention rows over the probe positions -> rows over the layouts' visual cells.

        rows: [batch, layers, heads, n_probe_max] (sample i's first `probe_positions(inputs, i)`
        entries valid); returns [batch, layers, heads, n_visual_max], ordered like `layouts` (padded
        like `laser.method.attention.pad_positions`). Called right after the forward on `inputs`, so model
        state of that forward (e.g. Q-Former cross-attention) is still at hand. Identity by default.
        """
        return rows

    def pixel_rows(self, inputs: BatchFeature) -> dict[str, list[int]]:
        """The processed, normalised image tensors of `inputs` (what the vision tower reads) and, for
        each, how many of its leading rows belong to each sample, in sample order.

        Default: `pixel_values`, with one row per sample ([batch, ...], e.g. a sample's stacked tiles)
        or one row per image ([images, ...], the images of all samples in order). A family whose tensor
        has another row unit (flattened patches, tiles) overrides this.
        """
        pixels = inputs.get("pixel_values")
        if not isinstance(pixels, torch.Tensor):
            return {}
        batch = len(inputs["input_ids"])
        counts = [len(sizes) for sizes in inputs.get("laser_image_sizes", [])]
        if pixels.shape[0] == batch:
            return {"pixel_values": [1] * batch}
        if counts and pixels.shape[0] == sum(counts):
            return {"pixel_values": counts}
        raise ValueError(
            f"{self.name}: pixel_values has {pixels.shape[0]} rows for {batch} samples; "
            "the adapter must say which rows belong to which sample (override pixel_rows)"
        )

    def sample_rows(self, inputs: BatchFeature) -> dict[str, list[int]]:
        """For each tensor or list of `inputs`, how many of its leading rows belong to each sample, in
        sample order (what `laser.method.views.take_samples` needs to cut a batch into sample subsets).
        Other values (scalars, 0-d tensors) are shared by every sample and not listed.

        Default: the pixel tensors of `pixel_rows`; then any input with one row per sample (`input_ids`,
        `attention_mask`, per-token keys, `laser_image_sizes` ...) or one per image (`image_grid_thw`,
        `image_sizes` ...: images per sample from `laser_image_sizes`). An input with another row count
        raises; a family with such an input overrides this.
        """
        batch = len(inputs["input_ids"])
        images = [len(sizes) for sizes in inputs.get("laser_image_sizes", [])]
        rows = dict(self.pixel_rows(inputs))
        for key, value in inputs.items():
            if key in rows or not isinstance(value, (torch.Tensor, list)):
                continue
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                continue
            count = len(value)
            if count == batch:
                rows[key] = [1] * batch
            elif images and count == sum(images):
                rows[key] = images
            else:
                raise ValueError(
                    f"{self.name}: input {key!r} has {count} rows for {batch} samples of {images} images; "
                    "the adapter must say which rows belong to which sample (override sample_rows)"
                )
        return rows

    def pixel_views(self, inputs: BatchFeature, index: int) -> list[PixelView]:
        """The processed images of sample `index` of `inputs` and the region of its images each shows,
        so that a region of an image can be edited where the model reads it (the masked view,
        docs/method.md "Views").

        Default: one view per segment of `visual_layout(inputs, index)`, in order: the sample's rows of
        `pixel_values` (`pixel_rows`) read as images [C, H, W] (a [tiles, C, H, W] row gives one per
        tile; all-zero padding images after the segments' are ignored), each covered by its segment's
        grid (H and W multiples of the grid) and showing the segment's box. Families whose pixels are
        laid out otherwise (flattened patches, tiles that do not match the segments) override this.
        """
        rows = self.pixel_rows(inputs)
        if list(rows) != ["pixel_values"]:
            raise NotImplementedError(f"{self.name}: pixel tensors {sorted(rows)}; the adapter must override pixel_views")
        counts = rows["pixel_values"]
        start = sum(counts[:index])
        part = inputs["pixel_values"][start : start + counts[index]]
        segments = self.visual_layout(inputs, index).segments
        if part.ndim < 4:
            raise NotImplementedError(
                f"{self.name}: pixel_values of shape {tuple(inputs['pixel_values'].shape)} are not images "
                "[..., C, H, W]; the adapter must override pixel_views"
            )
        units = part.view(-1, *part.shape[-3:])
        if units.shape[0] < len(segments) or bool(units[len(segments) :].any()):
            raise NotImplementedError(
                f"{self.name}: sample {index} has {units.shape[0]} pixel images for {len(segments)} layout "
                "segments; the adapter must override pixel_views"
            )
        views = []
        for unit, segment in zip(units, segments):
            grid_rows, grid_cols = segment.grid
            if unit.shape[-2] % grid_rows or unit.shape[-1] % grid_cols:
                raise NotImplementedError(
                    f"{self.name}: a {unit.shape[-2]}x{unit.shape[-1]} pixel image under a {grid_rows}x{grid_cols} grid; "
                    "the adapter must override pixel_views"
                )
            views.append(PixelView(segment.image_index, segment.box, unit))
        return views

    def pixel_transform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale [C], offset [C]): an image's pixel value v in 0..255 becomes `v * scale + offset` in the
        processed tensor (rescaling, then normalisation). Default: the image processor's
        `rescale_factor`, `image_mean` and `image_std` (each applied when its `do_*` flag is set)."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None:
            raise NotImplementedError(f"{self.name}: no image processor; the adapter must override pixel_transform")
        scale = float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", True) else 1.0
        if getattr(image_processor, "do_normalize", True):
            mean = torch.tensor(image_processor.image_mean, dtype=torch.float64).flatten()
            std = torch.tensor(image_processor.image_std, dtype=torch.float64).flatten()
            return (scale / std).float(), (-mean / std).float()
        return torch.full((3,), scale), torch.zeros(3)

    def position_ids(self, attention_mask: torch.Tensor, past_length: int = 0) -> torch.Tensor | None:
        """Position ids for a (possibly padded) chunk whose 2D mask covers cache + chunk.

        attention_mask: [batch, past_length + chunk]. Returns [batch, chunk]. Families with
        multimodal rotary positions return None and let the model compute them.
        """
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.clamp(min=0)
        return positions[:, past_length:]

    def forward(
        self, inputs: dict[str, Any], cache: Any = None, mask: torch.Tensor | None = None, **model_kwargs: Any
    ) -> Any:
        """One forward of the model on a left-padded chunk, with the family's position ids: every
        decoder forward of the method (prefill, prefix and continuations, decoding steps, option
        scoring) goes through here.

        inputs: the model's tensors (`prepare_model_inputs`), `input_ids` [batch, chunk] and, unless
            `mask` is given, `attention_mask` [batch, past + chunk] (1 = token), covering the cache and
            the chunk; pixels and other model inputs on a prefill.
        cache: the KV cache of the `past` earlier positions, passed under the model's cache argument
            (`laser.compat.cache_kwarg`); None on a prefill.
        mask: the 2-D mask [batch, past + chunk] the position ids are counted from when `inputs` holds
            none (a decoding step of an unpadded batch, whose mask of ones the model need not check).
        model_kwargs: passed on to the model (`use_cache`, `logits_to_keep` ...).

        past = mask width - chunk; the position ids `position_ids(mask, past)` ([batch, chunk], or the
        family's own shape) are added unless None. Returns the model's output: logits [batch, chunk or
        `logits_to_keep`, vocab] and, with `use_cache`, the cache (`laser.compat.output_cache`).
        """
        positions_mask = inputs["attention_mask"] if mask is None else mask
        inputs = dict(inputs)
        if cache is not None:
            inputs[cache_kwarg(self.model)] = cache
        position_ids = self.position_ids(positions_mask, positions_mask.shape[1] - inputs["input_ids"].shape[1])
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        return self.model(**inputs, **model_kwargs)

    def prepare_model_inputs(self, inputs: BatchFeature) -> dict[str, Any]:
        """Tensors the model's forward takes, moved to the model's device and dtype."""
        out = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            out[key] = value
        return out

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
