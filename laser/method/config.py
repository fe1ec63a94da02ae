"""`LaserConfig`: every method choice with its default (docs/method.md), loaded from YAML presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from ..paths import config_dir


@dataclass
class VaqConfig:
    """Layer selection and the localisation map."""

    select: str = "vaq"  # vaq: argmax VAQ[l] | fixed: adapter.default_layer (or `layer`)
    layer: int | None = None  # the fixed layer; None = adapter.default_layer
    layers: list[int] | None = None  # candidate layers for argmax; None = all decoder layers
    top_heads: int = 8  # K: VAQ[l] = mean of the top-K heads' ||c[l,h]||_2
    map: str = "contrastive"  # contrastive: relu(a+ - a0) | ratio: a+ / a0 (ViCrop) | raw: a+
    heads: str = "top"  # top: the top-K heads of l* | all: every head (ViCrop)
    baseline: str = "remove"  # remove: the question is removed | generic: `generic_prompt` replaces it
    generic_prompt: str = "Write a general description of the image."
    ratio_eps: float = 1e-6  # per-head a+ / (a0 + eps) for VAQ scores; the ratio map itself has none
    # ViCrop's rel_att_high: attention passes on tiles about `tile_size` px tall (a large image split as
    # ViCrop's code does), their maps put back side by side; None = one pass on the whole image
    tile_size: int | None = None


@dataclass
class CropConfig:
    enabled: bool = True
    strategy: str = "window"  # window: box-filter argmax (Con-ViCrop) | multiscale: ViCrop's windows
    ratio: float = 0.5  # crop side / image side
    min_side: int = 224  # pixels; the whole image if it is smaller
    input: str = "crop"  # crop: the crop alone | both: original + crop as two images
    # multiscale: ViCrop's ratios, multiples of the adapter's base box side (`crop_box_side`)
    scales: list[float] = field(default_factory=lambda: [1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
    canvas: int = 512  # long side of the canvas the map is painted on
    # where the map's grids lie on the image: processor (the region the processor kept: centre crop,
    # padding) | whole (each image's grids stretched over the whole image, as ViCrop's code maps LLaVA's)
    geometry: str = "processor"


@dataclass
class CounterfactualConfig:
    view: str = "mask"  # mask: hide the top cells of M | noise: VCD diffusion noise
    mask_ratio: float = 0.05
    fill: str = "mean"  # mean | blur | noise
    noise_step: int = 500
    noise_steps: int = 1000


@dataclass
class DecodeConfig:
    mode: str = "auto"  # direct | contrastive | auto
    alpha: float = 1.0
    beta: float = 0.1  # adaptive plausibility; 0 disables
    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class GateConfig:
    depth: float = 0.5  # contrastive when l*/L >= depth


@dataclass
class LaserConfig:
    """A whole method: `LaserConfig.preset("laser")`, or built field by field."""

    name: str = "laser"
    localize: bool = True  # False: no attention pass at all (vanilla, vcd)
    vaq: VaqConfig = field(default_factory=VaqConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    prefix_reuse: bool = True
    seed: int = 0
    save_heatmap: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        choices = {
            "vaq.select": (self.vaq.select, ("vaq", "fixed")),
            "vaq.map": (self.vaq.map, ("contrastive", "ratio", "raw")),
            "vaq.heads": (self.vaq.heads, ("top", "all")),
            "vaq.baseline": (self.vaq.baseline, ("remove", "generic")),
            "crop.strategy": (self.crop.strategy, ("window", "multiscale")),
            "crop.input": (self.crop.input, ("crop", "both")),
            "crop.geometry": (self.crop.geometry, ("processor", "whole")),
            "counterfactual.view": (self.counterfactual.view, ("mask", "noise")),
            "counterfactual.fill": (self.counterfactual.fill, ("mean", "blur", "noise")),
            "decode.mode": (self.decode.mode, ("direct", "contrastive", "auto")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"config {key}={value!r}; expected one of {', '.join(allowed)}")
        if not 0 < self.crop.ratio <= 1:
            raise ValueError(f"config crop.ratio={self.crop.ratio}; expected 0 < ratio <= 1")
        if not 0 <= self.counterfactual.mask_ratio <= 1:
            raise ValueError(f"config counterfactual.mask_ratio={self.counterfactual.mask_ratio}")
        if not self.crop.scales or min(self.crop.scales) <= 0:
            raise ValueError(f"config crop.scales={list(self.crop.scales)}; expected positive multiples")
        if self.vaq.tile_size is not None and self.vaq.tile_size < 1:
            raise ValueError(f"config vaq.tile_size={self.vaq.tile_size}; expected a side in px >= 1 or null")
        if self.vaq.top_heads < 1:
            raise ValueError(f"config vaq.top_heads={self.vaq.top_heads}; expected >= 1")
        if self.decode.max_new_tokens < 1:
            raise ValueError(f"config decode.max_new_tokens={self.decode.max_new_tokens}; expected >= 1")
        if self.decode.beta < 0 or self.decode.beta > 1:
            raise ValueError(f"config decode.beta={self.decode.beta}; expected 0 <= beta <= 1")

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, values: dict[str, Any] | Any) -> LaserConfig:
        """Merge `values` onto the defaults; an unknown key is an error naming the key."""
        base = OmegaConf.structured(cls)
        try:
            merged = OmegaConf.merge(base, values)
        except (ConfigKeyError, ValidationError) as err:
            raise ValueError(f"invalid method config: {err.msg if hasattr(err, 'msg') else err}") from None
        return OmegaConf.to_object(merged)

    @classmethod
    def from_file(cls, path: str | Path) -> LaserConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"method config {str(path)!r} does not exist")
        return cls.from_dict(OmegaConf.load(path))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LaserConfig:
        """A preset from `configs/method/<name>.yaml`, with dotted-key overrides."""
        path = config_dir() / "method" / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown method preset {name!r}; available: {', '.join(list_presets())}")
        values = OmegaConf.load(path)
        if overrides:
            values = OmegaConf.merge(values, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_presets() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))
