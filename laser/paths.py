"""Where the project's YAML configs and shipped assets live."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """`configs/` beside the package (editable install or checkout), or `$LASER_CONFIG_DIR`."""
    override = os.environ.get("LASER_CONFIG_DIR")
    if override:
        return Path(override)
    return PACKAGE_DIR.parent / "configs"


def assets_dir() -> Path:
    return PACKAGE_DIR / "assets"
