"""Stopping cleanly when the scheduler asks: finish the batch in flight, flush, release, exit for requeue.

Schedulers warn before they kill: SIGTERM (SLURM preemption, Kubernetes, `kill`), or the signal SLURM
sends `--signal=USR1@90` seconds before the time limit. `PreemptionWatch` records either; the
`StopWhenPreempted` callback, placed after the prediction writer, raises `Preempted` at the end of the
batch in flight — after the writer has appended and fsynced it — so a requeued run resumes exactly there.

Our handlers are installed before the Trainer starts: Lightning then keeps them (it composes its SIGTERM
forwarding to the processes it launched with ours, and does not install its SLURM SIGUSR1 handler, which
would save a full-model checkpoint that a prediction run does not need). Under SLURM the job is requeued
with `scontrol requeue` (Lightning's requeue command) after the SIGUSR1 warning; SIGTERM preemption is
requeued by SLURM itself when the partition's preempt mode says so.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from types import FrameType
from typing import Any

from lightning.pytorch.callbacks import Callback

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """The run stopped after a batch because the scheduler signalled; `code` is 128 + the signal."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(128 + self.signum)


class PreemptionWatch:
    """Records the first preemption signal received; `install()` / `restore()` the handlers."""

    def __init__(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            print(f"laser: received {name}; finishing the batch in flight, then stopping (rerun to resume)",
                  file=sys.stderr, flush=True)

    def install(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


class StopWhenPreempted(Callback):
    """Raises `Preempted` at the end of a batch once a preemption signal was seen (after the writer)."""

    def __init__(self, watch: PreemptionWatch):
        self.watch = watch

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        signum = self.watch.signum
        if signum is None and getattr(trainer, "received_sigterm", False):
            signum = signal.SIGTERM
        if signum is not None:
            raise Preempted(signum)


def requeue_slurm_job(environ: dict[str, str] | None = None) -> str | None:
    """`scontrol requeue` this SLURM job (array task included); returns what happened, None outside SLURM."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job = env.get("SLURM_JOB_ID")
    if not job or not re.fullmatch(r"[0-9_]+", job):
        return None
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeue of SLURM job {job} failed: {err}"
    if result.returncode != 0:
        return f"requeue of SLURM job {job} failed: {result.stderr.strip() or result.returncode}"
    return f"requeued SLURM job {job}"
