"""LASER: layer-adaptive visual localisation and decoding enhancement for LVLMs (training-free).

Layers, each importing only the ones below it (tests/test_packaging.py, LAYERS):

- `laser.paths` — where the configs and shipped assets are;
- `laser.adapters` — the adapter contract (`VisionLanguageAdapter`) and one adapter per LVLM family;
- `laser.method` — the method itself, in the paper's order (probe, attention passes, VAQ, map,
  crop, views, decoding, engine) with its configuration (`LaserConfig`);
- `laser.loading` — dtypes, per-sample seeds, and a model and method preset loaded into an engine;
- `laser.data` — annotation readers, samples and the image-loading dataset;
- `laser.records` — prediction files and run configs, metrics and `laser evaluate`;
- `laser.testbed` — the shipped fine-detail benchmark;
- `laser.run` — running over data sets: config composition, the Lightning module and data module,
  the prediction writer callback, `predict`;
- `laser.report` — tables, figures and one-sample pictures over runs (`laser compare`, `laser show`);
- `laser.integrations` — LASER inside other tools (lmms-eval);
- `laser.cli` — the `laser` command (`predict`, `evaluate`, `compare`, `show`, `list`, `demo`).

`LaserModule`, `VQADataModule` and `PredictionWriter` (the Lightning layer) are exported here too,
imported on first use so that `import laser` does not pay for Lightning.
"""

from typing import Any

from .loading import load_engine
from .method.config import LaserConfig, list_presets
from .method.engine import LaserEngine
from .method.prediction import Prediction
from .method.scoring import OptionScores

__version__ = "0.2.0"

_LIGHTNING_NAMES = {
    "LaserModule": "laser.run.lightning",
    "VQADataModule": "laser.run.datamodule",
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
    "load_engine",
]


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_NAMES:
        import importlib

        return getattr(importlib.import_module(_LIGHTNING_NAMES[name]), name)
    raise AttributeError(f"module 'laser' has no attribute {name!r}")
