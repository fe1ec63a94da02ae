"""The data layer as seen from `laser.run`: `laser.data`, plus the Lightning `VQADataModule`
(`laser.run.datamodule`, imported on first use so that reading annotations does not pay for Lightning).
README examples import `laser.run.data`."""

from typing import Any

from ..data import *  # noqa: F403
from ..data import __all__ as _data_names

__all__ = [*_data_names, "VQADataModule"]  # noqa: F405


def __getattr__(name: str) -> Any:
    if name == "VQADataModule":
        from .datamodule import VQADataModule

        return VQADataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
