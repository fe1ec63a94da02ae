"""`laser predict ... dry_run=true`: what a run would do, without loading a model or writing anything.

It composes and validates the config (done by `compose`), resolves the adapter from the checkpoint's
`config.json`, reads the annotations, counts the samples already written in `output_dir`, decides
what `laser predict` would do with them (new, resume, overwrite, or stop on a changed config) and
asks Lightning which accelerator, devices and strategy the trainer keys give. No weights are
read, no process is launched, no file or folder is created.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .compose import data_kwargs, model_ref


def dry_run(cfg: DictConfig) -> dict[str, Any]:
    """The plan of `laser predict` for `cfg` (a composed, validated config).

    Keys: config (what run_config.json would hold, every method field), adapter, annotations,
    samples, bad_entries, written (of this run's samples, already in output_dir), extra_records
    (written ids not in the data), pending (to predict now), action (new | resumed | overwritten | stop),
    differences (config keys that changed since the folder's run_config.json), error (why
    predict would stop, or None) and trainer (`trainer_plan`).
    """
    from ..adapters import resolve_adapter_class
    from ..records.files import RunConfigMismatch, completed_ids, run_config_action
    from .datamodule import VQADataModule
    from .predict import run_config

    config = run_config(cfg)
    adapter = resolve_adapter_class(model_ref(cfg), cfg.model.adapter)
    datamodule = VQADataModule(**data_kwargs(cfg))
    datamodule.setup("predict")
    expected = datamodule.expected_ids
    output_dir = Path(cfg.output_dir)
    done = completed_ids(output_dir)
    written = sum(sample_id in done for sample_id in expected)
    mode = "overwrite" if cfg.overwrite else "resume" if cfg.resume else "new"
    error = None
    try:
        action, differences = run_config_action(output_dir, config, mode)
    except RunConfigMismatch as mismatch:
        action, differences, error = "stop", mismatch.differences, str(mismatch)
    return {
        "config": config,
        "adapter": adapter.name,
        "annotations": str(datamodule.annotations),
        "samples": len(expected),
        "bad_entries": len(datamodule.errors),
        "output_dir": str(output_dir),
        "written": written,
        "extra_records": len(done - set(expected)),
        "pending": len(expected) - (0 if action == "overwritten" else written),
        "action": action,
        "differences": differences,
        "error": error,
        "trainer": trainer_plan(cfg),
    }


def trainer_plan(cfg: DictConfig) -> dict[str, Any]:
    """What Lightning makes of the trainer keys: accelerator, strategy, devices, nodes, precision.

    Builds the `Trainer` (as `predict` does, without the writer callback), which resolves devices
    and the cluster environment but launches nothing and writes nothing.
    """
    import lightning.pytorch as pl

    from .predict import trainer_kwargs

    kwargs = trainer_kwargs(cfg)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "GPU available: ..." lines
    try:
        trainer = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, enable_model_summary=False)
    finally:
        quiet.setLevel(level)
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "devices": trainer.num_devices,
        "device_ids": list(trainer.device_ids),
        "num_nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "environment": type(trainer.strategy.cluster_environment).__name__
        if getattr(trainer.strategy, "cluster_environment", None) is not None
        else None,
    }


def format_dry_run(plan: dict[str, Any]) -> str:
    """The resolved config as YAML, then one line per decision."""
    trainer = plan["trainer"]
    per_rank = math.ceil(plan["pending"] / trainer["world_size"]) if trainer["world_size"] else plan["pending"]
    actions = {
        "new": "start a new run",
        "resumed": "resume (same run config)" if not plan["differences"] else "resume with a changed config",
        "overwritten": "delete the existing predictions and start over (overwrite=true)",
        "stop": "stop: the folder holds predictions from a different run config",
    }
    lines = [
        "# laser predict, dry run: the resolved config (run_config.json)",
        OmegaConf.to_yaml(OmegaConf.create(plan["config"])).rstrip(),
        "",
        f"adapter:          {plan['adapter']}",
        f"annotations:      {plan['annotations']}",
        f"samples:          {plan['samples']}"
        + (f" ({plan['bad_entries']} bad entries skipped, data.on_error=skip)" if plan["bad_entries"] else ""),
        f"already written:  {plan['written']} in {plan['output_dir']} "
        + ("(deleted: overwrite=true)" if plan["action"] == "overwritten" else "(skipped)")
        + (f"; {plan['extra_records']} record(s) of other samples" if plan["extra_records"] else ""),
        f"to predict:       {plan['pending']}",
        f"action:           {actions[plan['action']]}",
    ]
    lines += [f"  changed: {d}" for d in plan["differences"]]
    lines += [
        f"trainer:          {trainer['accelerator']}, {trainer['strategy']}, {trainer['devices']} device(s) "
        f"{trainer['device_ids']} x {trainer['num_nodes']} node(s) = world size {trainer['world_size']}, "
        f"precision {trainer['precision']}, environment {trainer['environment']}",
        f"per rank:         about {per_rank} samples",
        "nothing was loaded or written; "
        + ("laser predict would stop here (below)" if plan["error"] else "drop dry_run=true to run it"),
    ]
    return "\n".join(lines)
