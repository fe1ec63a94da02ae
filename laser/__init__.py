"""LASER: layer-adaptive visual localisation and decoding enhancement for LVLMs (training-free).

Layers, each importing only the ones below it:

- `laser.adapters` — the adapter contract (`VisionLanguageAdapter`) and one adapter per LVLM family;
- `laser.method` — the method itself, in the paper's order (probe, attention passes, VAQ, map,
  crop, views, decoding, engine) with its configuration (`LaserConfig`);
- `laser.run` — running it over data sets: the `laser` command, config composition, the Lightning
  module and data module, the prediction writer, evaluation and metrics;
- `laser.report` and `laser.testbed` — tables, figures and the shipped fine-detail benchmark.

`LaserModule`, `VQADataModule` and `PredictionWriter` (the Lightning layer) are exported here too,
imported on first use so that `import laser` does not pay for Lightning.
"""

from typing import Any

from .method.config import LaserConfig, list_presets
from .method.engine import LaserEngine
from .method.prediction import Prediction
from .method.scoring import OptionScores

__version__ = "0.2.0"

_LIGHTNING_NAMES = {
    "LaserModule": "laser.run.lightning",
    "VQADataModule": "laser.run.data.datamodule",
    "PredictionWriter": "laser.run.writer",
}

__all__ = [
    "LaserConfig",
    "LaserEngine",
    "LaserModule",
    "OptionScores",
    "Prediction",
    "PredictionWriter",
    "VQADataModule",
    "__version__",
    "list_presets",
]


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_NAMES:
        import importlib

        return getattr(importlib.import_module(_LIGHTNING_NAMES[name]), name)
    raise AttributeError(f"module 'laser' has no attribute {name!r}")
