"""Adapter registry: `@register_adapter`, `create_adapter`, `list_adapters` (timm-style)."""

from __future__ import annotations

import fnmatch
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .base import VisionLanguageAdapter

ENTRY_POINT_GROUP = "laser.adapters"

_ADAPTERS: dict[str, type[VisionLanguageAdapter]] = {}
_entry_points_loaded = False


class AdapterNotFoundError(KeyError):
    """No registered adapter matches the requested name, path or architecture."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_adapter(cls: type[VisionLanguageAdapter]) -> type[VisionLanguageAdapter]:
    """Class decorator: register an adapter under `cls.name` and its `architectures`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    existing = _ADAPTERS.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"adapter name {cls.name!r} is already registered by {existing.__qualname__}")
    _ADAPTERS[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, VisionLanguageAdapter):
            register_adapter(obj)


def reload_entry_points() -> None:
    """Look at the `laser.adapters` entry-point group again (after installing a plug-in)."""
    global _entry_points_loaded
    _entry_points_loaded = False
    _load_entry_points()


def list_adapters(pattern: str = "*") -> list[str]:
    """Registered adapter names matching a shell-style wildcard, sorted."""
    _load_entry_points()
    return sorted(n for n in _ADAPTERS if fnmatch.fnmatchcase(n, pattern))


def get_adapter_class(name: str) -> type[VisionLanguageAdapter]:
    _load_entry_points()
    if name in _ADAPTERS:
        return _ADAPTERS[name]
    raise AdapterNotFoundError(
        f"unknown adapter {name!r}; registered adapters: {', '.join(list_adapters()) or '(none)'}"
    )


def adapter_for_architecture(architecture: str) -> type[VisionLanguageAdapter]:
    _load_entry_points()
    for cls in _ADAPTERS.values():
        if architecture in cls.architectures:
            return cls
    served = sorted(a for c in _ADAPTERS.values() for a in c.architectures)
    raise AdapterNotFoundError(
        f"no registered adapter serves the architecture {architecture!r}; "
        f"served architectures: {', '.join(served)}. Pass adapter=<name> to choose one."
    )


def architecture_of(path: str | Path) -> str:
    """`config.json` `architectures[0]` of a local checkpoint folder."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    architectures = config.get("architectures") or []
    if not architectures:
        raise AdapterNotFoundError(f"{config_file} names no `architectures`; pass adapter=<name>")
    return architectures[0]


def create_adapter(
    name_or_path: str | Path,
    *,
    model: Any = None,
    processor: Any = None,
    adapter: str | None = None,
    **load_kwargs: Any,
) -> VisionLanguageAdapter:
    """Build an adapter.

    - `create_adapter("llava", model=model, processor=processor)` wraps a model already in memory;
    - `create_adapter("/path/to/checkpoint")` loads a local folder, the adapter chosen from its
      `config.json` `architectures` (or forced with `adapter="llava"`);
    - `create_adapter("llava")` loads the adapter's default checkpoint.
    """
    name_or_path = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if model is not None:
        cls = get_adapter_class(adapter or name_or_path)
        if processor is None:
            raise ValueError("create_adapter(..., model=...) also needs processor=...")
        return cls(model, processor, **load_kwargs)
    if path.is_dir():
        cls = get_adapter_class(adapter) if adapter else adapter_for_architecture(architecture_of(path))
        return cls.from_pretrained(str(path), **load_kwargs)
    if path.exists():
        raise ValueError(f"model path {name_or_path!r} is a file; expected a checkpoint folder")
    _load_entry_points()
    if name_or_path in _ADAPTERS or adapter:
        cls = get_adapter_class(adapter or name_or_path)
        checkpoint = getattr(cls, "default_checkpoint", None)
        if not checkpoint:
            raise ValueError(f"adapter {cls.name!r} has no default checkpoint; pass a checkpoint path")
        return cls.from_pretrained(checkpoint if name_or_path == cls.name else name_or_path, **load_kwargs)
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        raise AdapterNotFoundError(
            f"{name_or_path!r} is neither a registered adapter nor a local folder; for a hub id pass "
            f"adapter=<name> (registered: {', '.join(list_adapters())})"
        )
    raise AdapterNotFoundError(
        f"{name_or_path!r} is neither a registered adapter ({', '.join(list_adapters())}) "
        "nor an existing checkpoint folder"
    )


def resolve_adapter_class(name_or_path: str | Path, adapter: str | None = None) -> type[VisionLanguageAdapter]:
    """The adapter class `create_adapter` would use, without loading anything (for early errors)."""
    path = Path(str(name_or_path)).expanduser()
    if adapter:
        return get_adapter_class(adapter)
    if path.is_dir():
        return adapter_for_architecture(architecture_of(path))
    _load_entry_points()
    if str(name_or_path) in _ADAPTERS:
        return _ADAPTERS[str(name_or_path)]
    raise AdapterNotFoundError(
        f"model {str(name_or_path)!r} is neither a registered adapter ({', '.join(list_adapters())}) "
        "nor an existing checkpoint folder"
    )
