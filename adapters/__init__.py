"""LVLM family adapters: one module per family, the base class and the registry.

Every module in this package is imported once so its `@register_adapter` classes are registered;
third-party adapters come in through the `laser.adapters` entry-point group.
"""

import importlib
import pkgutil

from ._registry import (
    ENTRY_POINT_GROUP,
    AdapterNotFoundError,
    adapter_for_architecture,
    create_adapter,
    get_adapter_class,
    list_adapters,
    register_adapter,
    reload_entry_points,
    resolve_adapter_class,
)
from .base import DEFAULT_INSTRUCTION, VisionLanguageAdapter, VisualLayout, VisualSegment

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("base", "geometry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DEFAULT_INSTRUCTION",
    "ENTRY_POINT_GROUP",
    "AdapterNotFoundError",
    "VisionLanguageAdapter",
    "VisualLayout",
    "VisualSegment",
    "adapter_for_architecture",
    "create_adapter",
    "get_adapter_class",
    "list_adapters",
    "register_adapter",
    "reload_entry_points",
    "resolve_adapter_class",
]
