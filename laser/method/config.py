"""`LaserConfig`: every method choice with its default (docs/method.md), loaded from YAML presets.

Every field carries its one-line help in `option(default, doc)` (dataclass field metadata): the
single source `laser predict --help` prints and `config_keys` walks. `did_you_mean` names the
closest valid key or value in errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from ..paths import config_dir

_NO_DEFAULT = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, doc: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its one-line help: `ratio: float = option(0.5, "crop side / image side")`."""
    metadata = {"doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ConfigKey:
    """One leaf of a config dataclass: its dotted key, default, help line and type (as written)."""

    key: str
    default: Any
    doc: str
    type: str


def config_keys(cls: type, prefix: str = "") -> list[ConfigKey]:
    """Every leaf field of the dataclass `cls` (nested dataclasses walked), in definition order."""
    hints = typing.get_type_hints(cls)
    keys: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys.extend(config_keys(kind, f"{prefix}{f.name}."))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        written = f.type if isinstance(f.type, str) else getattr(kind, "__name__", str(kind))
        keys.append(ConfigKey(f"{prefix}{f.name}", default, f.metadata.get("doc", ""), written))
    return keys


def config_sections(cls: type, prefix: str = "") -> dict[str, str]:
    """`{"vaq.": "layer selection and the localisation map", ...}`: each nested dataclass's docstring line."""
    hints = typing.get_type_hints(cls)
    sections: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            sections[f"{prefix}{f.name}."] = (kind.__doc__ or "").strip().splitlines()[0]
            sections.update(config_sections(kind, f"{prefix}{f.name}."))
    return sections


def unknown_keys(values: Mapping[str, Any], cls: type, prefix: str = "") -> Iterator[str]:
    """Dotted keys of `values` that are not fields of `cls` (a dict-valued field takes any sub-key)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            yield f"{prefix}{key}"
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            yield from unknown_keys(value, hints[key], f"{prefix}{key}.")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` for the valid choice closest to `name`, or "" when none is close.

    A dotted key that is the tail of exactly one choice (`crop.ratio` for `method.crop.ratio`)
    names that choice; otherwise the closest by `difflib` (ratio >= 0.6).
    """
    choices = [str(c) for c in choices]
    tails = [c for c in choices if c.endswith(f".{name}")]
    if len(tails) == 1:
        return f"; did you mean {tails[0]!r}?"
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class VaqConfig:
    """Layer selection (VAQ) and the localisation map."""

    select: str = option("vaq", "vaq: l* = argmax VAQ[l] | fixed: adapter.default_layer (or vaq.layer)")
    layer: int | None = option(None, "the layer for select=fixed; null: the adapter's default_layer")
    layers: list[int] | None = option(
        None, "candidate layers for the argmax; null: every decoder layer but layer 0 (docs/method.md, VAQ)"
    )
    top_heads: int = option(8, "K: VAQ[l] = mean of the top-K heads' ||c[l,h]||_2")
    map: str = option(
        "contrastive", "contrastive: relu(a+ - a0) | ratio: mean_h(a+) / mean_h(a0) (ViCrop) | raw: a+"
    )
    heads: str = option("top", "heads averaged into the map: top: the top-K of l* | all: every head (ViCrop)")
    baseline: str = option(
        "remove", "the a0 prompt: remove: the question removed | generic: vaq.generic_prompt instead"
    )
    generic_prompt: str = option(
        "Write a general description of the image.", "the question of the a0 prompt for baseline=generic"
    )
    ratio_eps: float = option(1e-6, "map=ratio: VAQ scores use per-head a+ / (a0 + eps); the map has none")
    tile_size: int | None = option(
        None, "ViCrop's rel_att_high: attention on tiles about this many px tall; null: the whole image"
    )


@dataclass(frozen=True)
class CropConfig:
    """Con-ViCrop: where the crop goes and what the model sees."""

    enabled: bool = option(True, "crop at all; false: the answer comes from the original image")
    strategy: str = option("window", "window: box-filter argmax of the map | multiscale: ViCrop's windows")
    ratio: float = option(0.5, "crop side / image side (0 < ratio <= 1)")
    min_side: int = option(224, "smallest crop side in pixels; the whole image if it is smaller")
    input: str = option("crop", "crop: the crop alone | both: original + crop as two images")
    scales: list[float] = option(
        doc="multiscale: ViCrop's ratios, multiples of the adapter's base box side (crop_box_side)",
        factory=lambda: [1.0, 1.2, 1.4, 1.6, 1.8, 2.0],
    )
    canvas: int = option(512, "long side in pixels of the canvas the map is painted on")
    geometry: str = option(
        "processor",
        "where the map's grids lie: processor: the region the processor kept | whole: stretched over the "
        "whole image (ViCrop's code)",
    )


@dataclass(frozen=True)
class CounterfactualConfig:
    """The counterfactual view contrastive decoding subtracts."""

    view: str = option("mask", "mask: hide the top cells of the map | noise: VCD diffusion noise")
    mask_ratio: float = option(0.05, "fraction of the focused view's patch cells masked (top by the map)")
    fill: str = option("mean", "what masked cells are filled with: mean | blur | noise")
    noise_step: int = option(500, "view=noise: forward diffusion step t of the noise")
    noise_steps: int = option(1000, "view=noise: steps T of the diffusion schedule")


@dataclass(frozen=True)
class DecodeConfig:
    """Answer decoding: direct, or contrastive against the counterfactual view."""

    mode: str = option("auto", "direct | contrastive | auto: contrastive when l*/L >= gate.depth")
    alpha: float = option(1.0, "contrastive weight: score = z+ + alpha * (z+ - z-)")
    beta: float = option(0.1, "adaptive plausibility: drop tokens with p+ < beta * max p+; 0 disables")
    max_new_tokens: int = option(16, "longest answer in tokens")
    # null (the default): the model's generation config decides, as in `model.generate`
    do_sample: bool | None = option(None, "sample (seeded per sample) instead of greedy; null: the model's")
    temperature: float | None = option(None, "do_sample: logits / temperature; null: the model's")
    top_k: int | None = option(None, "do_sample: keep the k most likely tokens, 0 all; null: the model's")
    top_p: float | None = option(None, "do_sample: nucleus up to this cumulative probability; null: the model's")
    repetition_penalty: float | None = option(None, "penalise tokens already in prompt or answer; null: the model's")


@dataclass(frozen=True)
class GateConfig:
    """The decode.mode=auto gate."""

    depth: float = option(0.5, "decode.mode=auto: contrastive when l*/L >= depth (0-based l*)")


@dataclass(frozen=True)
class LaserConfig:
    """The method: a preset under configs/method/; every choice of docs/method.md.

    `LaserConfig.preset("laser")`, or built field by field.
    """

    name: str = option("laser", "the method's name, recorded with every prediction")
    localize: bool = option(True, "run the attention passes; false: no attention at all (vanilla, vcd)")
    vaq: VaqConfig = field(default_factory=VaqConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    prefix_reuse: bool = option(True, "share the KV cache of the prompt prefix between the two attention passes")
    seed: int = option(0, "sampling seed of direct engine calls (laser predict seeds each sample from `seed`)")
    save_heatmap: bool = option(False, "store the localisation map with each prediction")

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
                raise ValueError(
                    f"config {key}={value!r}; expected one of {', '.join(allowed)}{did_you_mean(value, allowed)}"
                )
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
        """Merge `values` onto the defaults; an unknown key is an error naming the key and the closest one."""
        if isinstance(values, Mapping):
            for key in unknown_keys(values, cls):
                valid = [k.key for k in config_keys(cls)]
                raise ValueError(f"invalid method config: unknown key {key!r}{did_you_mean(key, valid)}")
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
            raise ValueError(
                f"unknown method preset {name!r}{did_you_mean(name, list_presets())} "
                f"(available: {', '.join(list_presets())})"
            )
        values = OmegaConf.load(path)
        if overrides:
            values = OmegaConf.merge(values, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> LaserConfig:
        """A new config with dotted-key overrides (`config.replace(**{"decode.mode": "direct"})`,
        `config.replace(save_heatmap=True)`), checked like a preset's; this one is unchanged (configs are
        frozen, so an engine's method never changes under it)."""
        values = self.to_dict()
        for key, value in overrides.items():
            node, (*parents, leaf) = values, key.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    valid = [k.key for k in config_keys(LaserConfig)]
                    raise ValueError(f"invalid method config: unknown key {key!r}{did_you_mean(key, valid)}")
                node = node[part]
            node[leaf] = value
        return LaserConfig.from_dict(values)


def list_presets() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))
