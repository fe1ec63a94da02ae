"""Composing a run config from configs/ and `key=value` overrides (omegaconf)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..method.config import LaserConfig
from ..paths import PACKAGE_DIR, config_dir

GROUPS = ("model", "data", "method", "trainer")
TOP_LEVEL = {"output_dir", "seed", "resume", "overwrite"}
MODEL_DEFAULTS: dict[str, Any] = {
    "adapter": None,
    "dtype": "auto",
    "device_map": None,  # "auto", "balanced", "sequential", a device ("cuda:1", "cpu") or {module: device}
    "attn_implementation": None,  # the model's default, or eager, sdpa, flash_attention_2, flex_attention ...
    "processor": {},  # keyword arguments of the processor (Qwen's max_pixels, min_pixels ...)
    "max_memory": None,  # per-device budget for device_map, e.g. {0: 70GiB, cpu: 200GiB}
}
MODEL_KEYS = {"name_or_path", *MODEL_DEFAULTS}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
ATTENTION_IMPLEMENTATIONS = (
    "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention",
)
TRAINER_KEYS = {
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "enable_progress_bar",
    "limit_predict_batches",
}


class ConfigError(ValueError):
    """A bad command-line config: unknown key, unknown preset or malformed override."""


def resolve_path(value: str | None) -> str | None:
    """`laser:<relative>` points inside the installed package (shipped assets)."""
    if isinstance(value, str) and value.startswith("laser:"):
        return str(PACKAGE_DIR / value.removeprefix("laser:"))
    return value


def group_names(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _load_group(group: str, value: Any) -> dict[str, Any]:
    path = config_dir() / group / f"{value}.yaml"
    if path.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        return {**MODEL_DEFAULTS, **loaded} if group == "model" else loaded  # type: ignore[dict-item,return-value]
    if group == "model":  # a registered adapter name or a checkpoint folder
        return {"name_or_path": str(value), **MODEL_DEFAULTS}
    raise ConfigError(f"unknown {group} preset {value!r}; available: {', '.join(group_names(group))}")


def parse_overrides(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split `group=name` choices from dotted `key=value` overrides."""
    choices, dotted = {}, []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        if not key:
            raise ConfigError(f"empty key in {arg!r}")
        if key in GROUPS:
            choices[key] = value
        else:
            dotted.append(arg)
    return choices, dotted


def compose(args: list[str], base: str = "predict") -> DictConfig:
    """The run config: configs/<base>.yaml, its groups loaded, then the overrides, checked."""
    defaults = OmegaConf.load(config_dir() / f"{base}.yaml")
    choices, dotted = parse_overrides(args)
    merged: dict[str, Any] = {}
    for key, value in OmegaConf.to_container(defaults).items():  # type: ignore[union-attr]
        if key in GROUPS:
            merged[key] = _load_group(key, choices.get(key, value))
        else:
            merged[key] = value
    cfg = OmegaConf.create(merged)
    try:
        overrides = OmegaConf.from_dotlist(dotted)
    except Exception as err:  # omegaconf's grammar errors
        raise ConfigError(f"malformed override: {err}") from None
    for key in overrides:
        if key not in GROUPS and key not in TOP_LEVEL:
            raise ConfigError(f"unknown config key {key!r}; top-level keys: {', '.join(sorted(TOP_LEVEL | set(GROUPS)))}")
    cfg = OmegaConf.merge(cfg, overrides)
    validate(cfg)
    return cfg


def _data_keys() -> set[str]:
    from .data.datamodule import VQADataModule

    return set(inspect.signature(VQADataModule.__init__).parameters) - {"self", "skip_ids"}


def validate(cfg: DictConfig) -> None:
    for group, allowed in (("model", MODEL_KEYS), ("trainer", TRAINER_KEYS), ("data", _data_keys())):
        unknown = set(cfg[group]) - allowed
        if unknown:
            raise ConfigError(
                f"unknown config key {group}.{sorted(unknown)[0]}; {group} keys: {', '.join(sorted(allowed))}"
            )
    validate_model(cfg)
    method_config(cfg)


def validate_model(cfg: DictConfig) -> None:
    """The loading keys: `model.device_map`, `model.attn_implementation`, `model.processor.<kwarg>`,
    `model.max_memory`; a device map means one process per node (it spreads one model over the node)."""
    model = cfg.model
    device_map = model.get("device_map")
    if device_map is not None and not OmegaConf.is_dict(device_map):
        text = str(device_map)
        if text not in DEVICE_MAP_STRATEGIES and not _is_device(text):
            raise ConfigError(
                f"model.device_map={text!r}; expected {', '.join(DEVICE_MAP_STRATEGIES)}, a device (cpu, cuda:1) "
                "or a mapping {module: device}"
            )
    attn = model.get("attn_implementation")
    if attn is not None and str(attn) not in ATTENTION_IMPLEMENTATIONS and "/" not in str(attn):
        raise ConfigError(
            f"model.attn_implementation={attn!r}; expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)} "
            "or a kernel repository (owner/name)"
        )
    processor = model.get("processor")
    if processor is not None and not OmegaConf.is_dict(processor):
        raise ConfigError(f"model.processor={processor!r}; expected processor options, e.g. model.processor.max_pixels=1003520")
    max_memory = model.get("max_memory")
    if max_memory is not None:
        if not OmegaConf.is_dict(max_memory):
            raise ConfigError(f"model.max_memory={max_memory!r}; expected a mapping, e.g. {{0: 70GiB, cpu: 200GiB}}")
        if device_map is None:
            raise ConfigError("model.max_memory needs model.device_map (it bounds what the map puts on each device)")
    devices = cfg.trainer.get("devices")
    if device_map is not None and str(devices) != "1":
        raise ConfigError(
            f"model.device_map spreads one model over this node's devices, so the run is one process per node: "
            f"set trainer.devices=1 (got {devices}); use trainer.num_nodes for several nodes"
        )


def _is_device(text: str) -> bool:
    import torch

    try:
        torch.device(int(text) if text.isdigit() else text)
    except (RuntimeError, ValueError):
        return False
    return True


def method_config(cfg: DictConfig) -> LaserConfig:
    try:
        return LaserConfig.from_dict(cfg.method)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def data_kwargs(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg.data)
    for key in ("annotations", "image_root"):
        data[key] = resolve_path(data.get(key))
    return data


def model_load_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """`from_pretrained` arguments from the set loading keys (`processor` as `processor_kwargs`)."""
    model = OmegaConf.to_container(cfg.model)
    out = {key: model.get(key) for key in ("device_map", "attn_implementation", "max_memory")}
    out["processor_kwargs"] = dict(model.get("processor") or {})
    return {k: v for k, v in out.items() if v is not None and v != {}}


def model_ref(cfg: DictConfig) -> str:
    value = resolve_path(cfg.model.name_or_path)
    return str(Path(value).expanduser()) if value and Path(value).expanduser().exists() else value
