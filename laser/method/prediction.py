"""`Prediction`: what the engine returns for one sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prediction:
    """answer; l* (`layer`); VAQ[l] for every decoder layer (`vaq`); crop box in original pixels
    (`box`); decode `path` (`direct`, `contrastive` or `vanilla`); per-stage wall seconds (`timings`,
    a batch's stage time divided by its size); `masked_cells`: the cells masked in the negative view of
    LASER's contrastive decoding, each (focused image index, (x0, y0, x1, y1) normalised in that image)."""

    answer: str
    layer: int | None = None
    vaq: list[float] | None = None
    box: list[int] | None = None
    path: str = "direct"
    timings: dict[str, float] = field(default_factory=dict)
    method: str = ""
    fallback: str | None = None
    token_ids: list[int] = field(default_factory=list)
    heatmap: torch.Tensor | None = None  # [h, w] density painted on the original, when requested
    masked_cells: list[Any] | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable fields for prediction files."""
        return {
            "prediction": self.answer,
            "layer": self.layer,
            "vaq": self.vaq,
            "box": self.box,
            "path": self.path,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "method": self.method,
            "fallback": self.fallback,
            "masked_cells": None if self.masked_cells is None else [
                [int(index), [round(float(v), 4) for v in box]] for index, box in self.masked_cells
            ],
        }
