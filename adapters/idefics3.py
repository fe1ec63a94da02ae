"""Idefics3 (`Idefics3ForConditionalGeneration`, also SmolVLM v1) and SmolVLM2 (`SmolVLMForConditionalGeneration`).

The processor resizes the image (stretching both sides to multiples of the tile size), cuts it into
rows x cols tiles and appends the whole image squashed to one tile (the global view). Each tile is
encoded alone and pixel-shuffled: (tile / patch / scale_factor)^2 tokens, row-major. In the prompt
each tile's run of image tokens follows `<fake_token_around_image><row_i_col_j>` and the global
view's follows `<fake_token_around_image><global-img>`; the layout reads those tags back.
"""

from __future__ import annotations

import re

import torch
from transformers import BatchFeature

from ._common import PromptAdapter
from ._registry import register_adapter
from .base import VisualLayout, VisualSegment

TILE_TAG = re.compile(r"<row_(\d+)_col_(\d+)>")


def runs(positions: torch.Tensor) -> list[torch.Tensor]:
    """Split sorted positions into runs of consecutive integers."""
    if positions.numel() == 0:
        return []
    breaks = (positions[1:] != positions[:-1] + 1).nonzero().flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


@register_adapter
class Idefics3Adapter(PromptAdapter):
    """Prompt `<|begin_of_text|>User:<image>{q}\\n{instr}<end_of_utterance>\\nAssistant:`."""

    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration",)
    model_class_name = "Idefics3ForConditionalGeneration"
    default_checkpoint = "HuggingFaceM4/Idefics3-8B-Llama3"
    default_layer = 14
    reference_num_layers = 32
    native_resolution = 364
    supports_multi_image = True
    nested_images = True
    layers_path = "model.text_model.layers"
    template = "User:{images}{question}{instruction}<end_of_utterance>\nAssistant:"
    image_text = "{token}"

    def __init__(self, model, processor, **kwargs):
        super().__init__(model, processor, **kwargs)
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size) // int(model.config.scale_factor)
        self.grid = (side, side)
        self.fake_token_id = self.tokenizer.convert_tokens_to_ids(
            getattr(processor, "fake_image_token", "<fake_token_around_image>")
        )

    def eos_token_ids(self) -> list[int]:
        ids = set(super().eos_token_ids())
        eou = self.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
        if isinstance(eou, int) and eou != self.tokenizer.unk_token_id:
            ids.add(eou)
        return sorted(ids)

    def tag(self, ids: torch.Tensor, run_start: int) -> tuple[int, int] | None:
        """(row, col) of the tile whose tokens start at `run_start`, or None for the global view."""
        before = ids[:run_start]
        fakes = (before == self.fake_token_id).nonzero().flatten()
        start = int(fakes[-1]) + 1 if fakes.numel() else max(0, run_start - 1)
        text = self.tokenizer.decode(ids[start:run_start].tolist(), skip_special_tokens=False)
        match = TILE_TAG.search(text)
        return (int(match.group(1)) - 1, int(match.group(2)) - 1) if match else None

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        ids = inputs["input_ids"][index]
        sizes = inputs["laser_image_sizes"][index]
        rows, cols = self.grid
        per_tile = rows * cols
        chunks = []
        for run in runs(self.image_token_positions(inputs, index)):
            if run.numel() % per_tile:
                raise ValueError(f"{self.name}: sample {index} has an image-token run of {run.numel()}")
            chunks += list(run.split(per_tile))
        segments, tiles, image_index = [], [], 0
        for chunk in chunks:
            tag = self.tag(ids, int(chunk[0]))
            if tag is not None:
                tiles.append((tag, chunk))
                continue
            n_rows = max((t[0] + 1 for t, _ in tiles), default=1)
            n_cols = max((t[1] + 1 for t, _ in tiles), default=1)
            for (r, c), positions in tiles:
                box = (c / n_cols, r / n_rows, (c + 1) / n_cols, (r + 1) / n_rows)
                segments.append(VisualSegment(image_index, positions, self.grid, box))
            segments.append(VisualSegment(image_index, chunk, self.grid, (0.0, 0.0, 1.0, 1.0)))
            tiles, image_index = [], image_index + 1
        if tiles or image_index != len(sizes):
            raise ValueError(f"{self.name}: sample {index} has {image_index} global views for {len(sizes)} images")
        return VisualLayout(segments, image_sizes=list(sizes))


@register_adapter
class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM2; prompt `<|im_start|>User:<image>{q}\\n{instr}<end_of_utterance>\\nAssistant:`."""

    name = "smolvlm"
    architectures = ("SmolVLMForConditionalGeneration",)
    model_class_name = "SmolVLMForConditionalGeneration"
    default_checkpoint = "HuggingFaceTB/SmolVLM2-2.2B-Instruct"
    reference_num_layers = 24
    default_layer = 12
    native_resolution = 384
