"""The versions a run's numbers depend on (`laser --version`, `run_config.json` `versions`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "transformers", "lightning")


def dependency_versions() -> dict[str, str]:
    """Installed versions of torch, transformers and lightning ("not installed" if absent)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_versions() -> dict[str, str]:
    """`{"laser": ..., "torch": ..., "transformers": ..., "lightning": ...}`."""
    from .. import __version__

    return {"laser": __version__, **dependency_versions()}


def version_line() -> str:
    """`laser 0.2.0 (torch ..., transformers ..., lightning ...)`."""
    from .. import __version__

    return f"laser {__version__} (" + ", ".join(f"{k} {v}" for k, v in dependency_versions().items()) + ")"
