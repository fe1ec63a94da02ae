"""`PredictionWriter`: the Lightning callback that appends each batch's records to the run's prediction
files (`laser.records.files`: crash-safe JSON lines, one file per rank, fsynced after every batch)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from ..records.files import RecordFile

KILL_AFTER_BATCH_ENV = "LASER_TEST_KILL_AFTER_BATCH"
"""Test-only: a process with this variable set to k SIGKILLs itself right after its k-th batch is
fsynced (k=0: when prediction starts), so the kill/resume tests stop a run at an exact point."""


class PredictionWriter(BasePredictionWriter):
    """Appends each batch's records to `<output_dir>/predictions.rank<R>.jsonl` (a `RecordFile`).

    `prediction` (what `predict_step` returns) must be a list of dict records (a single dict
    or None are accepted too). One write per batch and an fsync mean a crash loses at most the
    batch in flight; a torn tail left by an earlier crash is cut off when the file is opened.
    """

    def __init__(self, output_dir: str | Path, write_interval: Literal["batch"] = "batch") -> None:
        if write_interval != "batch":
            raise ValueError(
                f"write_interval={write_interval!r}; PredictionWriter only writes per batch "
                "(per-epoch writing would keep every prediction in memory and lose them all on a crash)"
            )
        super().__init__(write_interval)
        self.output_dir = Path(output_dir)
        self.written = 0
        self.batches = 0
        self._file: RecordFile | None = None
        self._rank: int | None = None

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, *where: Any
    ) -> None:
        """Append the batch's records (`prediction`, from `predict_step`) to this rank's file. `where`:
        Lightning's (batch_indices, batch, batch_idx, dataloader_idx), not needed here."""
        if prediction is None:
            return
        records = [prediction] if isinstance(prediction, Mapping) else prediction
        if not isinstance(records, (list, tuple)):
            raise TypeError(
                f"predict_step returned {type(prediction).__name__}; expected a list of dict records"
            )
        if not records:
            return
        if self._file is None or self._rank != trainer.global_rank:
            self.close()
            self._file, self._rank = RecordFile(self.output_dir, trainer.global_rank), trainer.global_rank
        self._file.append(records)
        self.written += len(records)
        self.batches += 1
        _test_kill_point(self.batches)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _test_kill_point(0)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.close()


def _test_kill_point(batches: int) -> None:
    """`KILL_AFTER_BATCH_ENV` = `k` or `k:SIGNAL`: after `batches` batches, die as an OOM-killed process
    would (SIGKILL), or receive what a scheduler sends before preemption (`k:TERM`, `k:USR1`)."""
    point, _, name = os.environ.get(KILL_AFTER_BATCH_ENV, "").partition(":")
    if point == str(batches):
        os.kill(os.getpid(), getattr(signal, f"SIG{name}") if name else signal.SIGKILL)
