"""Composing a run config from configs/ and `key=value` overrides (omegaconf).

Which keys exist is read from the dataclasses in `schema.GROUPS` (and `schema.RunOptions` for the
top-level keys); a key or preset that is not there is an error naming the closest valid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..loading import check_max_memory
from ..method.config import LaserConfig, config_keys, did_you_mean, unknown_keys
from ..paths import config_dir, resolve_path
from ..records.files import output_mode
from .schema import GROUPS, ModelOptions, RunOptions

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
ATTENTION_IMPLEMENTATIONS = (
    "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention",
)


class ConfigError(ValueError):
    """A bad command-line config: unknown key, unknown preset or malformed override."""


def group_names(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def valid_keys() -> list[str]:
    """Every dotted key `laser predict` accepts: `model.dtype`, `method.crop.ratio`, ..., `output_dir`."""
    keys = [f"{group}.{k.key}" for group, cls in GROUPS.items() for k in config_keys(cls)]
    return keys + [k.key for k in config_keys(RunOptions)]


def _load_group(group: str, value: Any) -> dict[str, Any]:
    path = config_dir() / group / f"{value}.yaml"
    if path.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        return {**model_defaults(), **loaded} if group == "model" else loaded  # type: ignore[dict-item,return-value]
    available = group_names(group)
    hint = did_you_mean(str(value), available)
    if group == "model" and not _looks_mistyped(str(value), hint):  # an adapter name or a checkpoint
        return {**model_defaults(), "name_or_path": str(value)}
    also = ", a checkpoint folder, hub id or adapter name" if group == "model" else ""
    raise ConfigError(f"unknown {group} preset {value!r}{hint} (available: {', '.join(available)}{also})")


def _looks_mistyped(value: str, hint: str) -> bool:
    """`model=llavva`: close to a preset, and not a folder, hub id (`org/name`) or adapter name."""
    from ..adapters import list_adapters

    return bool(hint) and "/" not in value and not Path(value).expanduser().exists() and value not in list_adapters()


def parse_overrides(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split `group=name` choices from dotted `key=value` overrides."""
    choices, dotted = {}, []
    for arg in args:
        if "=" not in arg:
            hint = "; options and help: laser predict --help" if arg.startswith("-") else ""
            raise ConfigError(f"expected key=value, got {arg!r}{hint}")
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
    _check_keys(overrides)  # before merging: a typo must not be hidden by a type error
    cfg = OmegaConf.merge(cfg, overrides)
    validate(cfg)
    return cfg


def _check_keys(cfg: Any) -> None:
    """An unknown dotted key anywhere in `cfg` is a ConfigError naming the closest valid key."""
    for key, value in cfg.items():
        if key in GROUPS:
            unknown = next(unknown_keys(value, GROUPS[key], f"{key}."), None) if value is not None else None
        else:
            unknown = next(unknown_keys({key: value}, RunOptions), None)
            while unknown is not None and isinstance(value, Mapping) and value:  # `modle.dtype`: the whole key
                key, value = next(iter(value.items()))
                unknown = f"{unknown}.{key}"
        if unknown is not None:
            raise ConfigError(f"unknown key {unknown!r}{did_you_mean(unknown, [*GROUPS, *valid_keys()])}")


def validate(cfg: DictConfig) -> None:
    """Every key known (`schema`), the method config valid, run flags consistent."""
    _check_keys(cfg)
    try:
        output_mode(bool(cfg.get("resume")), bool(cfg.get("overwrite")))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    validate_model(cfg)
    method_config(cfg)


def model_defaults() -> dict[str, Any]:
    """Every `model.*` key at its default, so run_config.json records each loading key, set or not."""
    return {k.key: k.default for k in config_keys(ModelOptions)}


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
        try:
            check_max_memory(max_memory, device_map)
        except ValueError as err:
            raise ConfigError(str(err)) from None
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
