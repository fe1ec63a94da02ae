"""What a process needs before it answers: the model's dtype, each sample's seed, and the engine.

`load_engine` is the one place a model preset (or checkpoint) and a method preset (or YAML file) become
a `LaserEngine`; `laser predict` (the Lightning module), the lmms-eval model, `laser show` and
`laser demo` all load through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .paths import config_dir, resolve_path

if TYPE_CHECKING:
    from .method.config import LaserConfig
    from .method.engine import LaserEngine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOADING_KEYS = ("device_map", "attn_implementation", "max_memory")
"""`model.*` keys that go to `from_pretrained` as they are (`processor` goes as `processor_kwargs`)."""


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that depends only on the run seed and the id (not on rank or batch)."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: float32 on CPU, bfloat16 on GPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_max_memory(max_memory: Any, device_map: Any, names: tuple[str, str] = ("model.max_memory", "model.device_map")) -> None:
    """A `max_memory` budget needs a `device_map` (`names`: how the caller's user spells the two)."""
    if max_memory is not None and device_map is None:
        raise ValueError(f"{names[0]} needs {names[1]} (it bounds what the map puts on each device)")


def load_kwargs(load: Mapping[str, Any], device: torch.device | None) -> dict[str, Any]:
    """`from_pretrained` arguments for this process: the set `load` keys, and without a `device_map` one
    that puts every weight straight onto `device` when that is an accelerator (no copy through host memory)."""
    kwargs = {k: v for k, v in load.items() if v is not None and v != {}}
    if device is not None and "device_map" not in kwargs and device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    return kwargs


def model_spec(model: str | Mapping[str, Any], adapter: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """A model's settings: `configs/model/<model>.yaml` when it exists, else a checkpoint folder, hub id or
    adapter name (`adapter: null`, `dtype: auto`); a mapping is taken as the settings. `name_or_path` is
    resolved (`laser:` prefix, an existing folder made absolute); explicit `adapter` / `dtype` win."""
    if isinstance(model, Mapping):
        spec = dict(model)
    else:
        preset = config_dir() / "model" / f"{model}.yaml"
        if preset.is_file():
            from omegaconf import OmegaConf

            spec = dict(OmegaConf.to_container(OmegaConf.load(preset)))  # type: ignore[arg-type]
        else:
            spec = {"name_or_path": str(model), "adapter": None, "dtype": "auto"}
    spec["name_or_path"] = resolve_path(spec["name_or_path"])
    path = Path(str(spec["name_or_path"])).expanduser()
    if path.exists():
        spec["name_or_path"] = str(path.resolve())
    if adapter is not None:
        spec["adapter"] = adapter
    if dtype is not None:
        spec["dtype"] = dtype
    return spec


def method_spec(method: LaserConfig | Mapping[str, Any] | str, overrides: Mapping[str, Any] | None = None) -> LaserConfig:
    """A method: a `LaserConfig` (as it is), a dict of its keys, a preset name (configs/method/) or a
    YAML file, with dotted `overrides` (`{"crop.ratio": 0.4}`); bad keys and unknown presets are errors."""
    from omegaconf import OmegaConf

    from .method.config import LaserConfig

    overrides = dict(overrides or {})
    if isinstance(method, str) and not Path(method).is_file():
        return LaserConfig.preset(method, **overrides)  # raises for an unknown preset, naming the available ones
    if isinstance(method, LaserConfig):
        if not overrides:
            return method
        values: Any = method.to_dict()
    elif isinstance(method, str):
        values = OmegaConf.load(method)
    else:
        values = method
    if overrides:
        values = OmegaConf.merge(values, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    return LaserConfig.from_dict(values)


def load_engine(
    model: str | Mapping[str, Any],
    method: LaserConfig | Mapping[str, Any] | str = "laser",
    device: str | torch.device | None = "auto",
    overrides: Mapping[str, Any] | None = None,
    load: Mapping[str, Any] | None = None,
) -> LaserEngine:
    """The engine of `method` on `model`, the model in eval mode without gradients.

    `model`: a model preset, checkpoint folder, hub id or adapter name, or its settings (`model_spec`;
    their loading keys `device_map`, `attn_implementation`, `max_memory`, `processor` are used).
    `method`, `overrides`: see `method_spec`. `device`: where the model goes, `auto` (cuda if available)
    or None (wherever the device map puts it); on an accelerator without a device map the weights load
    straight onto it (no copy through host memory). `load`: more `from_pretrained` arguments, over the
    settings' (`device_map`, `attn_implementation`, `max_memory`, `processor_kwargs`).
    """
    from .adapters import create_adapter
    from .method.engine import LaserEngine

    spec = model_spec(model)
    config = method_spec(method, overrides)
    kwargs: dict[str, Any] = {key: spec.get(key) for key in LOADING_KEYS}
    kwargs["processor_kwargs"] = dict(spec.get("processor") or {})
    kwargs.update(load or {})
    check_max_memory(kwargs.get("max_memory") or None, kwargs.get("device_map"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    placed = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = load_kwargs(kwargs, placed if device is not None else None)
    dtype = resolve_dtype(str(spec.get("dtype") or "auto"), placed)
    adapter = create_adapter(spec["name_or_path"], adapter=spec.get("adapter"), dtype=dtype, **kwargs)
    adapter.model.eval().requires_grad_(False)
    if device is not None and "device_map" not in kwargs and adapter.device != placed:
        adapter.model.to(placed)
    return LaserEngine(adapter, config)
