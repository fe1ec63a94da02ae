"""LVLM family adapters: one module per family, the base class and the registry."""

from . import llava  # noqa: F401  (registers adapters)
from ._registry import (
    ENTRY_POINT_GROUP,
    AdapterNotFoundError,
    adapter_for_architecture,
    create_adapter,
    get_adapter_class,
    list_adapters,
    register_adapter,
    reload_entry_points,
)
from .base import DEFAULT_INSTRUCTION, VisionLanguageAdapter, VisualLayout, VisualSegment

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
]
