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
MODEL_KEYS = {"name_or_path", "adapter", "dtype"}
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
        return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]
    if group == "model":  # a registered adapter name or a checkpoint folder
        return {"name_or_path": str(value), "adapter": None, "dtype": "auto"}
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
    method_config(cfg)


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


def model_ref(cfg: DictConfig) -> str:
    value = resolve_path(cfg.model.name_or_path)
    return str(Path(value).expanduser()) if value and Path(value).expanduser().exists() else value
