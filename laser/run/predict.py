"""`laser predict`: one method over one dataset with `trainer.predict`, resumable, on N devices and nodes.

Every process of a run executes this module: the launcher and the workers Lightning starts for it,
each task `srun` starts under SLURM, each process of `torchrun`. `detect_launch` tells them apart the
way Lightning's cluster environments do. Rank 0 alone settles the output folder (`settle_output`:
checks the run config, deletes old predictions under `overwrite=true`, writes run_config.json) before
any process reads it; the others check the same config read-only. Inside the Trainer, once the
processes are connected, every rank takes rank 0's list of finished samples (`SettledOutput`), so no
rank reads the folder before it is settled and all ranks skip the same samples.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ..records.files import completed_ids, output_mode
from .compose import data_kwargs, method_config, model_load_kwargs, model_ref

ANNOTATION_ERRORS = "annotation_errors.txt"
"""Bad annotation entries skipped with `data.on_error=skip`, one message a line."""


@dataclass(frozen=True)
class Launch:
    """How this process was started.

    kind: the cluster environment Lightning will use (`torchelastic`, `slurm`, `lsf`, `mpi`, or
    `lightning`: one process, or Lightning's own launcher and the workers it starts); main: rank 0,
    the process that settles the output folder; independent: the processes were started apart from
    each other (a cluster launcher with several processes, or several nodes), so each must join the
    Trainer even when rank 0 finds nothing to predict."""

    kind: str
    main: bool
    independent: bool
    lightning_detects: bool = True
    """False for an `srun` step Lightning takes for interactive use (`in_srun_step`): the Trainer is then
    given the SLURM environment explicitly (`trainer_plugins`)."""


def in_srun_step(environ: dict[str, str] | None = None) -> bool:
    """One of several tasks of an `srun` step (`SLURM_STEP_ID`, `SLURM_PROCID`, `SLURM_NTASKS` > 1),
    whatever the job's name. Inside an `salloc` shell SLURM names the job `bash`, which Lightning reads
    as "interactive, not SLURM-managed"; yet `srun` started every task, so each is one rank."""
    env = os.environ if environ is None else environ
    try:
        ntasks = int(env.get("SLURM_NTASKS") or 1)
    except ValueError:
        return False
    return bool(env.get("SLURM_STEP_ID")) and env.get("SLURM_PROCID") is not None and ntasks > 1


def detect_launch(num_nodes: int = 1) -> Launch:
    """This process's `Launch`, from the same cluster environments, in the same order, as Lightning; the
    tasks of an `srun` step are SLURM-managed even where Lightning would not say so (`in_srun_step`)."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for kind, environment in (
        ("torchelastic", TorchElasticEnvironment),
        ("slurm", SLURMEnvironment),
        ("lsf", LSFEnvironment),
        ("mpi", MPIEnvironment),
    ):
        detected = environment.detect()
        if not detected and kind == "slurm" and in_srun_step():
            return Launch("slurm", int(os.environ["SLURM_PROCID"]) == 0, True, lightning_detects=False)
        if detected:
            env = environment()
            return Launch(kind, env.global_rank() == 0, env.world_size() > 1)
    env = LightningEnvironment()  # Lightning's launcher gives its workers LOCAL_RANK > 0
    main = env.local_rank() == 0 and env.node_rank() == 0
    return Launch("lightning", main, num_nodes > 1 or env.node_rank() > 0)


def trainer_kwargs(cfg: DictConfig, launch: Launch | None = None) -> dict[str, Any]:
    """The `trainer.*` keys that are set, plus the cluster environment of `trainer_plugins`."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer).items() if v is not None and k != "logger"}
    plugins = trainer_plugins(launch or detect_launch(int(cfg.trainer.get("num_nodes") or 1)))
    if plugins:
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), *plugins]
    return kwargs


def trainer_plugins(launch: Launch) -> list[Any]:
    """The cluster environment the Trainer must be given: SLURM's for an `srun` step Lightning does not
    detect by itself (each task is a rank; without it every task would launch its own workers)."""
    if launch.kind == "slurm" and not launch.lightning_detects:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        return [SLURMEnvironment()]
    return []


def is_launcher_rank() -> bool:
    """True in the process that settles the output folder and prints the summary (rank 0)."""
    return detect_launch().main


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


def settle_output(output_dir: Path, config: dict[str, Any], mode: str, launch: Launch) -> str:
    """Make the output folder ready for this run; on rank 0 only, before any process reads it.

    Rank 0 checks `config` against the folder's run config, deletes old predictions under
    `overwrite=true` and writes run_config.json; the other processes check read-only and get the
    same error for a bad config (the folder is already claimed by this run, see `predict`). Returns the action.
    Under `overwrite=true` there is nothing to refuse, so the others do not look into the folder at all:
    rank 0 may be deleting the old predictions at that moment (a file listed, then gone before its stat)."""
    from ..records.files import run_config_action, write_run_config

    if launch.main:
        return write_run_config(output_dir, config, mode)
    if mode != "overwrite":
        run_config_action(output_dir, config, mode)
    return "child"


class SettledOutput(Callback):
    """Every rank skips the samples rank 0 found finished after settling the folder.

    Runs in `setup`, when the processes are connected: rank 0 broadcasts its list, the others
    take it (they never list the folder themselves, so they cannot see it half-settled or read
    another rank's first batch). With nothing left on any rank, the model is not loaded."""

    def __init__(self, done: set[str] | None):
        self.done = done

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        done = trainer.strategy.broadcast(sorted(self.done or ()) if trainer.global_rank == 0 else None, src=0)
        datamodule = trainer.datamodule
        datamodule.skip_ids = set(done)
        pl_module.idle = all(i in datamodule.skip_ids for i in datamodule.expected_ids)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) a prediction run; returns a summary dict.

    The run claims its output folder first (`laser.run.claim`: a second launch stops naming the holder,
    or waits with `wait=true`; a stale claim is taken over), shared by every process of the run, and
    stops cleanly on SIGTERM / SIGUSR1 after the batch in flight (`laser.run.preemption`), raising
    `Preempted` (exit status 128 + the signal) once the claim is released."""
    from ..adapters import resolve_adapter_class
    from .claim import RUN_ID_ENV, STALE_AFTER_SECONDS, FolderClaim
    from .preemption import Preempted, PreemptionWatch, requeue_slurm_job
    from .tracking import check_logger

    output_dir = Path(cfg.output_dir)
    mode = output_mode(bool(cfg.resume), bool(cfg.overwrite))
    resolve_adapter_class(model_ref(cfg), cfg.model.adapter)  # fail before anything is written
    check_logger(cfg.trainer.get("logger"))  # so does an unknown tracker, or one whose package is missing
    launch = detect_launch(int(cfg.trainer.get("num_nodes") or 1))
    stale_after = float(cfg.get("claim_stale_after") or STALE_AFTER_SECONDS)
    claim = FolderClaim(output_dir, wait=bool(cfg.get("wait", False)), stale_after=stale_after).acquire()
    inherited = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = claim.run_id  # the processes Lightning starts for this run join the claim
    watch = PreemptionWatch().install()
    try:
        return _run(cfg, output_dir, mode, launch, watch)
    except Preempted as stop:
        if launch.main:
            name = signal.Signals(stop.signum).name
            written = len(completed_ids(output_dir))
            print(f"laser predict: stopped by {name} after the batch in flight ({written} samples written in "
                  f"{output_dir}); run the same command to resume", file=sys.stderr)
            if stop.signum == signal.SIGUSR1:
                outcome = requeue_slurm_job()
                if outcome:
                    print(f"laser predict: {outcome}", file=sys.stderr)
        raise
    finally:
        watch.restore()
        claim.release()
        if inherited is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = inherited


def _run(cfg: DictConfig, output_dir: Path, mode: str, launch: Launch, watch: Any) -> dict[str, Any]:
    """The run itself, on a claimed folder."""
    import lightning.pytorch as pl

    from ..records.files import merge_records
    from .datamodule import VQADataModule
    from .lightning import LaserModule
    from .preemption import StopWhenPreempted
    from .tracking import BatchLogging, log_final, make_logger
    from .writer import PredictionWriter

    action = settle_output(output_dir, run_config(cfg), mode, launch)
    datamodule = VQADataModule(**data_kwargs(cfg))
    datamodule.setup("predict")
    if datamodule.errors and launch.main:  # data.on_error=skip: list what was left out
        (output_dir / ANNOTATION_ERRORS).write_text("".join(f"{e}\n" for e in datamodule.errors), encoding="utf-8")
        print(
            f"laser predict: skipped {len(datamodule.errors)} bad annotation entries (data.on_error=skip), "
            f"listed in {output_dir / ANNOTATION_ERRORS}; first: {datamodule.errors[0]}",
            file=sys.stderr,
        )
    done = completed_ids(output_dir) if launch.main else None  # the others take rank 0's list
    pending = [i for i in datamodule.expected_ids if i not in done] if done is not None else None
    start = time.perf_counter()
    summary = {
        "output_dir": str(output_dir),
        "action": action,
        "skipped": len(done) if done is not None else None,
        "pending": len(pending) if pending is not None else None,
    }
    logger = make_logger(cfg.trainer.get("logger"), output_dir, name=output_dir.name)
    if pending or launch.independent or not launch.main:
        pl.seed_everything(int(cfg.seed), verbose=False)
        module = LaserModule(
            model={"name_or_path": model_ref(cfg), "adapter": cfg.model.adapter, "dtype": cfg.model.dtype},
            method=method_config(cfg),
            seed=int(cfg.seed),
            load=model_load_kwargs(cfg),
        )
        trainer = pl.Trainer(
            **trainer_kwargs(cfg, launch),
            callbacks=[SettledOutput(done), PredictionWriter(output_dir), StopWhenPreempted(watch),
                       *([BatchLogging()] if logger else [])],
            logger=logger,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
        trainer.strategy.barrier("laser-predict-written")  # every rank has written its last batch
        if trainer.global_rank != 0:
            return summary
    records, report = merge_records(output_dir, datamodule.expected_ids)
    summary.update(
        seconds=round(time.perf_counter() - start, 2),
        written=len(records),
        expected=len(datamodule.expected_ids),
        errors=report["errors"],
        retryable=len(report["retryable"]),
        skipped_annotations=len(datamodule.errors),
    )
    if logger and records:
        try:
            summary["logged"] = log_final(logger, output_dir)
        except Exception as err:  # the predictions are written: a tracker failure does not fail the run
            print(f"laser predict: could not log the final metrics to trainer.logger ({type(err).__name__}: {err})",
                  file=sys.stderr)
    return summary
