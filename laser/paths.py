"""Where the project's YAML configs and shipped assets live.

The repository keeps the presets in the top-level `configs/` folder; a wheel installs that folder as
`laser/configs` (package data). Both places are looked up, so a checkout, an editable install and a
wheel all find the same presets.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The preset folder: `$LASER_CONFIG_DIR`, else `laser/configs` (wheel), else `configs/` beside
    the package (checkout or editable install)."""
    override = os.environ.get("LASER_CONFIG_DIR")
    if override:
        return Path(override)
    installed = PACKAGE_DIR / "configs"
    if (installed / "method").is_dir():
        return installed
    return PACKAGE_DIR.parent / "configs"


def assets_dir() -> Path:
    """Shipped data: the testbed split, its images and the testbed models."""
    return PACKAGE_DIR / "assets"


def resolve_path(value: str | None) -> str | None:
    """`laser:<relative>` points inside the installed package (shipped assets)."""
    if isinstance(value, str) and value.startswith("laser:"):
        return str(PACKAGE_DIR / value.removeprefix("laser:"))
    return value
