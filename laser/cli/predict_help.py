"""`laser predict --help`: every key by group with the value this command line gives it and its help.

Keys and help lines come from the config dataclasses (`schema.GROUPS`, `schema.RunOptions`, walked
by `config_keys`); values from composing the command line (without `--help`), so
`laser predict method=vicrop --help` shows ViCrop's values.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..method.config import config_keys, config_sections
from ..paths import config_dir
from ..run.compose import compose, group_names, method_config
from ..run.schema import GROUPS, RunOptions

KEY_COLUMN = 46
"""Help lines start in this column (or on the next line after a longer `key=value`)."""

USAGE = """usage: laser predict [model=NAME] [data=NAME] [method=NAME] [trainer=NAME] [KEY=VALUE ...]

Run a method over a dataset with Lightning's trainer.predict, one JSON line per sample in
output_dir; running the same command again resumes. Add dry_run=true to see what would run
(nothing is loaded or written). The values below are what this command line gives each key
(configs/predict.yaml, the presets chosen and your KEY=VALUEs); `laser predict method=vicrop --help`
shows ViCrop's."""


def show_value(value: Any) -> str:
    """As it is written on the command line: null, true, 0.5, [1, 2], text."""
    return value if isinstance(value, str) and value else json.dumps(value)


def key_line(key: str, value: Any, doc: str) -> str:
    left = f"  {key}={show_value(value)}"
    if len(left) + 2 > KEY_COLUMN:
        return f"{left}\n{'':{KEY_COLUMN}}{doc}"
    return f"{left:{KEY_COLUMN}}{doc}"


def preset_lines() -> list[str]:
    from ..adapters import list_adapters

    names = {group: ", ".join(group_names(group)) for group in GROUPS}
    names["model"] += f"; or a checkpoint folder, hub id or adapter name ({', '.join(list_adapters())})"
    indent = " " * 12
    return [
        textwrap.fill(names[group], 110, initial_indent=f"  {group + '=':<10}", subsequent_indent=indent)
        for group in GROUPS
    ]


def _values(cfg: DictConfig, group: str) -> dict[str, Any]:
    if group == "method":
        return OmegaConf.to_container(OmegaConf.create(method_config(cfg).to_dict()))  # every field
    return OmegaConf.to_container(cfg[group]) if group in cfg else {}


def _lookup(values: dict[str, Any], dotted: str, default: Any) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return default
        values = values[part]
    return values


def predict_help(args: list[str]) -> str:
    """The help text; `args` is the rest of the command line, composed for the values shown."""
    cfg = compose(args)
    chosen = {group: value for arg in args if "=" in arg for group, value in [arg.split("=", 1)] if group in GROUPS}
    defaults = OmegaConf.load(config_dir() / "predict.yaml")
    lines = [USAGE, "", "presets (group=NAME; files under configs/<group>/; `laser list` for more):", *preset_lines()]
    for group, cls in GROUPS.items():
        title = (cls.__doc__ or "").strip().splitlines()[0]
        lines += ["", f"{group} ({group}={chosen.get(group, defaults[group])}). {title}"]
        values, sections = _values(cfg, group), config_sections(cls)
        for key in sorted(config_keys(cls), key=lambda k: "." in k.key):  # a section's own keys first
            section = key.key.rsplit(".", 1)[0] + "." if "." in key.key else ""
            if section in sections:  # first key of a nested section: its title
                lines.append(f" {group}.{section[:-1]}: {sections.pop(section)}")
            lines.append(key_line(f"{group}.{key.key}", _lookup(values, key.key, key.default), key.doc))
    lines += ["", (RunOptions.__doc__ or "").strip().splitlines()[0]]
    for key in config_keys(RunOptions):
        lines.append(key_line(key.key, cfg.get(key.key, key.default), key.doc))
    return "\n".join(lines)

