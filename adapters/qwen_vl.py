"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): dynamic-resolution grids with multimodal rotary positions.

The image processor resizes each image (whole, aspect kept up to a multiple of patch*merge) and
`image_grid_thw` gives its patch grid; the language model sees `thw[1:] / spatial_merge_size` merged
tokens in row-major order. Qwen2.5-VL and Qwen3-VL subclass this adapter (`qwen2_5_vl.py`, `qwen3_vl.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import PixelView, VisualLayout, VisualSegment


def _store_frames(image: torch.Tensor, shaped: torch.Tensor) -> None:
    """Write `image` [C, H, W] into an image's patch rows viewed as `shaped` [h/m, w/m, m, m, C, T, p, p],
    every temporal frame alike."""
    hm, wm, m, _, channels, _, patch, _ = shaped.shape
    spatial = image.view(channels, hm, m, patch, wm, m, patch)
    shaped.copy_(spatial.permute(1, 4, 2, 5, 0, 3, 6)[:, :, :, :, :, None].expand_as(shaped))


@register_adapter
class Qwen2VLAdapter(PromptAdapter):
    """Chat prompt `<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{question}\\n{instruction}`.

    Positions: the model builds its 3D (t, h, w) rotary ids itself on every prefill from
    `input_ids`, `mm_token_type_ids` and `image_grid_thw` (left padding handled) and stores the
    per-row offset `rope_deltas`; continuations on a KV cache (prefix reuse, decoding) get text
    positions `cumsum(mask) - 1 + rope_delta` from `position_ids`.
    """

    name = "qwen2_vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    model_class_name = "Qwen2VLForConditionalGeneration"
    default_layer = 12
    reference_num_layers = 28
    native_resolution = 448
    supports_multi_image = True
    default_checkpoint = "Qwen/Qwen2-VL-7B-Instruct"
    system_prompt: str | None = "You are a helpful assistant."

    @classmethod
    def load_processor(cls, path: str, **options: Any) -> Any:
        """`min_pixels` / `max_pixels` set the image processor's `size` (`shortest_edge` / `longest_edge`, in
        pixels), the one place recent transformers read them from; passed as they are, they are kept as call
        arguments, which warn on every call (and are to be removed). Other options go to `from_pretrained`."""
        bounds = {key: options.pop(key) for key in ("min_pixels", "max_pixels") if key in options}
        processor = super().load_processor(path, **options)
        if not bounds:
            return processor
        size = getattr(getattr(processor, "image_processor", None), "size", None)
        if not (dataclasses.is_dataclass(size) and hasattr(size, "shortest_edge") and hasattr(size, "longest_edge")):
            return super().load_processor(path, **options, **bounds)  # an older processor: its own call arguments
        edges = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}
        processor.image_processor.size = dataclasses.replace(size, **{edges[k]: int(v) for k, v in bounds.items()})
        return processor

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any):
        super().__init__(model, processor, **kwargs)
        self.image_token = getattr(processor, "image_token", "<|image_pad|>")
        self.merge = int(model.config.vision_config.spatial_merge_size)

    # ----------------------------------------------------------------- prompts
    def prompt(self, question: str | None, n_images: int) -> str:
        images = f"<|vision_start|>{self.image_token}<|vision_end|>" * n_images
        question_part = f"{question}\n" if question is not None else ""
        system = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n" if self.system_prompt else ""
        return (
            f"{system}<|im_start|>user\n{images}{question_part}{self.instruction}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    # ----------------------------------------------------------------- structure
    def inner_model(self) -> nn.Module:
        return self.model.model

    def decoder_layers(self) -> nn.ModuleList:
        return self.inner_model().language_model.layers

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        positions = (inputs["input_ids"][index] == self.image_token_id).nonzero().flatten()
        sizes = inputs["laser_image_sizes"][index]
        first = sum(len(s) for s in inputs["laser_image_sizes"][:index])
        grids = inputs["image_grid_thw"][first : first + len(sizes)]
        segments, start = [], 0
        for i, (t, h, w) in enumerate(grids.tolist()):
            rows, cols = h // self.merge, w // self.merge
            n = t * rows * cols
            if t != 1:
                raise ValueError(f"sample {index}, image {i}: temporal grid {t}; images have t = 1")
            segments.append(VisualSegment(i, positions[start : start + n], (rows, cols), (0.0, 0.0, 1.0, 1.0)))
            start += n
        if start != positions.numel():
            raise ValueError(f"sample {index}: {positions.numel()} image tokens for grids of {start} tokens")
        return VisualLayout(segments, image_sizes=list(sizes))

    def pixel_rows(self, inputs: BatchFeature) -> dict[str, list[int]]:
        """`pixel_values` holds flattened patches, `t * h * w` rows per image (`image_grid_thw`)."""
        per_image = inputs["image_grid_thw"].prod(dim=-1).tolist()
        rows, start = [], 0
        for sizes in inputs["laser_image_sizes"]:
            rows.append(int(sum(per_image[start : start + len(sizes)])))
            start += len(sizes)
        return {"pixel_values": rows}

    def pixel_views(self, inputs: BatchFeature, index: int) -> list[PixelView]:
        """Each image of the sample rebuilt as [C, H, W] from its flattened patches (a copy; `commit`
        writes it back). An image's rows are `t * h * w` patches in merge-window order (t, h / m, w / m,
        m, m), each `C * T * p * p` values (T identical frames of a still image); frame 0 is read and
        every frame written."""
        image_processor = self.processor.image_processor
        patch, frames = int(image_processor.patch_size), int(image_processor.temporal_patch_size)
        pixels, grids, m = inputs["pixel_values"], inputs["image_grid_thw"].tolist(), self.merge
        sizes = inputs["laser_image_sizes"]
        first = sum(len(s) for s in sizes[:index])
        start = sum(t * h * w for t, h, w in grids[:first])
        views = []
        for i in range(len(sizes[index])):
            t, h, w = grids[first + i]
            rows = pixels[start : start + t * h * w]
            start += t * h * w
            if t != 1:
                raise ValueError(f"sample {index}, image {i}: temporal grid {t}; images have t = 1")
            shaped = rows.view(h // m, w // m, m, m, -1, frames, patch, patch)  # [h/m, w/m, m, m, C, T, p, p]
            image = shaped.permute(4, 5, 0, 2, 6, 1, 3, 7)[:, 0].reshape(-1, h * patch, w * patch).clone()
            write_back = functools.partial(_store_frames, image, shaped)
            views.append(PixelView(i, (0.0, 0.0, 1.0, 1.0), image, write_back))
        return views

    # ----------------------------------------------------------------- forward inputs
    def prepare_model_inputs(self, inputs: BatchFeature) -> dict[str, Any]:
        """Also (re)derives `mm_token_type_ids` from `input_ids`, so that a truncated prompt (the
        shared prefix of prefix reuse) carries matching token types."""
        out = super().prepare_model_inputs(inputs)
        if "input_ids" in out and out.get("image_grid_thw") is not None:
            out["mm_token_type_ids"] = (out["input_ids"] == self.image_token_id).int()
        return out

    def position_ids(self, attention_mask: torch.Tensor, past_length: int = 0) -> torch.Tensor | None:
        """None on a prefill (the model computes 3D ids and `rope_deltas`); on a cache continuation
        [3, batch, chunk] text positions shifted by the rows' `rope_deltas` of the last prefill."""
        if past_length == 0:
            return None
        deltas = getattr(self.inner_model(), "rope_deltas", None)
        if deltas is None:
            raise RuntimeError(f"{self.name}: cache continuation before any multimodal prefill")
        rows = attention_mask.shape[0]
        if rows % deltas.shape[0]:
            raise RuntimeError(f"{self.name}: {rows} rows continue a prefill of {deltas.shape[0]} rows")
        deltas = deltas.to(attention_mask.device).repeat_interleave(rows // deltas.shape[0], dim=0)
        text = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_length:] + deltas
        return text.unsqueeze(0).expand(3, -1, -1)
