"""`laser predict`: one method over one dataset with `trainer.predict`, resumable, on N devices."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .compose import data_kwargs, method_config, model_ref

ANNOTATION_ERRORS = "annotation_errors.txt"
"""Bad annotation entries skipped with `data.on_error=skip`, one message a line."""


def is_launcher_rank() -> bool:
    """True in the process the user started (DDP children get LOCAL_RANK / NODE_RANK > 0)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0 and int(
        os.environ.get("RANK", 0)
    ) == 0


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """What defines a run's predictions (stored in run_config.json, compared on resume), with the
    versions of laser, torch, transformers and lightning that made them."""
    from .versions import run_versions

    return {
        "model": OmegaConf.to_container(cfg.model),
        "data": OmegaConf.to_container(cfg.data),
        "method": method_config(cfg).to_dict(),
        "trainer": OmegaConf.to_container(cfg.trainer),
        "seed": cfg.seed,
        "output_dir": str(cfg.output_dir),
        "versions": run_versions(),
    }


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) a prediction run; returns a summary dict."""
    import lightning.pytorch as pl

    from .data.datamodule import VQADataModule
    from .lightning import LaserModule
    from .writer import PredictionWriter, completed_ids, read_records, write_run_config

    output_dir = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume=true and overwrite=true contradict each other; choose one")
    mode = "overwrite" if cfg.overwrite else "resume" if cfg.resume else "new"
    from ..adapters import resolve_adapter_class

    resolve_adapter_class(model_ref(cfg), cfg.model.adapter)  # fail before anything is written
    action = "child"
    if is_launcher_rank():
        action = write_run_config(output_dir, run_config(cfg), mode)
    done = completed_ids(output_dir)
    datamodule = VQADataModule(**data_kwargs(cfg), skip_ids=done)
    datamodule.setup("predict")
    if datamodule.errors and is_launcher_rank():  # data.on_error=skip: list what was left out
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ANNOTATION_ERRORS).write_text("".join(f"{e}\n" for e in datamodule.errors), encoding="utf-8")
        print(
            f"laser predict: skipped {len(datamodule.errors)} bad annotation entries (data.on_error=skip), "
            f"listed in {output_dir / ANNOTATION_ERRORS}; first: {datamodule.errors[0]}",
            file=sys.stderr,
        )
    pending = [i for i in datamodule.expected_ids if i not in done]
    start = time.perf_counter()
    summary = {"output_dir": str(output_dir), "action": action, "skipped": len(done), "pending": len(pending)}
    if pending:
        pl.seed_everything(int(cfg.seed), verbose=False)
        module = LaserModule(
            model=model_ref(cfg),
            method=method_config(cfg),
            adapter=cfg.model.adapter,
            dtype=cfg.model.dtype,
            seed=int(cfg.seed),
        )
        trainer_cfg = OmegaConf.to_container(cfg.trainer)
        trainer = pl.Trainer(
            **{k: v for k, v in trainer_cfg.items() if v is not None},
            callbacks=[PredictionWriter(output_dir)],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
        trainer.strategy.barrier("laser-predict-written")  # every rank has written its last batch
        if trainer.global_rank != 0:
            return summary
    records = read_records(output_dir)
    summary.update(
        seconds=round(time.perf_counter() - start, 2),
        written=len({r.get("sample_id") for r in records}),
        expected=len(datamodule.expected_ids),
        errors=sum(r.get("error") is not None for r in records),
        skipped_annotations=len(datamodule.errors),
    )
    return summary
