"""LASER: layer-adaptive visual localisation and decoding enhancement for LVLMs (training-free)."""

from .config import LaserConfig, list_presets
from .engine import LaserEngine
from .prediction import Prediction

__all__ = ["LaserConfig", "LaserEngine", "Prediction", "list_presets"]
__version__ = "0.1.0"
