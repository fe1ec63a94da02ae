"""A run owns its output folder (laser.run.claim) and stops cleanly when preempted (laser.run.preemption).

End to end through `laser predict`: a second launch on a claimed folder is refused naming the holder and
writes nothing; a SIGKILLed holder's claim is taken over and the run ends with each sample once; SIGTERM
in the middle of a run stops it after the batch in flight, and the rerun completes with the predictions of
an uninterrupted run; SIGUSR1 (SLURM's time-limit warning) does the same and requeues the job with
`scontrol requeue`; a 2-process DDP run holds one claim and is not refused by itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from run_fixtures import (
    comparable,
    laser_command,
    predict_args,
    predict_in_process,
    records_by_id,
    save_tiny_llava,
    write_dataset,
)

from laser.run.claim import CLAIM_FILE, read_claim
from laser.run.writer import KILL_AFTER_BATCH_ENV

N = 4
ARGS = ("data.batch_size=1", "data.num_workers=0", "method.decode.max_new_tokens=2")


def strip(records: dict) -> dict:
    return {i: {k: v for k, v in r.items() if k != "timings"} for i, r in records.items()}




def run_subprocess(args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("LASER_RUN_ID", None)
    return subprocess.run(laser_command("predict", *args), capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    model = save_tiny_llava(root / "model", image_size=112)
    annotations = write_dataset(root / "data", n=N, sizes=((160, 120), (120, 160), (112, 112)))
    reference = root / "reference"
    assert predict_in_process(*predict_args(model, annotations, reference, *ARGS)) == 0
    assert not (reference / CLAIM_FILE).exists()  # released at the end
    return root, model, annotations, strip(records_by_id(reference))


def test_a_second_launch_is_refused_naming_the_holder_and_writes_nothing(setup, tmp_path, capsys):
    root, model, annotations, _ = setup
    out = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out.mkdir()
        now = time.time()
        claim = {"run_id": "run-holder", "host": socket.gethostname(), "pid": holder.pid, "started": now,
                 "heartbeat": now, "command": "laser predict ..."}
        (out / CLAIM_FILE).write_text(json.dumps(claim))
        assert predict_in_process(*predict_args(model, annotations, out, *ARGS)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "run-holder" in err and f"pid {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [CLAIM_FILE]  # nothing written by the refused launch
        assert read_claim(out).run_id == "run-holder"
    finally:
        holder.kill()
        holder.wait()


def test_a_sigkilled_holder_is_taken_over_and_each_sample_is_written_once(setup, tmp_path, capsys):
    root, model, annotations, reference = setup
    out = tmp_path / "killed"
    args = predict_args(model, annotations, out, *ARGS)
    killed = run_subprocess(args, **{KILL_AFTER_BATCH_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL
    stale = read_claim(out)
    assert stale is not None and stale.pid != os.getpid()  # the dead run's claim is still there
    assert predict_in_process(*args) == 0
    assert "taking over the stale claim" in capsys.readouterr().err
    assert strip(records_by_id(out)) == reference  # records_by_id: every id exactly once
    assert not (out / CLAIM_FILE).exists()


def test_sigterm_stops_after_the_batch_in_flight_and_the_rerun_completes(setup, tmp_path):
    root, model, annotations, reference = setup
    out = tmp_path / "preempted"
    args = predict_args(model, annotations, out, *ARGS)
    stopped = run_subprocess(args, **{KILL_AFTER_BATCH_ENV: "1:TERM"})  # SIGTERM while batch 1 is done
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "SIGTERM" in stopped.stderr
    assert len(records_by_id(out)) == 1  # it finished the batch in flight and started no other
    assert not (out / CLAIM_FILE).exists()  # released on the way out
    assert predict_in_process(*args) == 0
    assert strip(records_by_id(out)) == reference


def stand_in_scontrol(folder, log, code: int = 0, message: str = ""):
    """An `scontrol` in `folder` that appends its arguments to `log` (and exits with `code`, saying
    `message` on stderr); `folder` goes first on PATH."""
    folder.mkdir(exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "{message}" >&2\nexit {code}\n')
    script.chmod(0o755)
    return folder


def scontrol_calls(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_sigusr1_under_slurm_stops_after_the_batch_in_flight_requeues_and_the_rerun_completes(
    setup, tmp_path, monkeypatch
):
    root, model, annotations, reference = setup
    out, log = tmp_path / "warned", tmp_path / "scontrol.log"
    for name in list(os.environ):  # SLURM_JOB_ID alone: a batch job's single process, not a SLURM-launched rank
        if name.startswith("SLURM_") or name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
            monkeypatch.delenv(name)
    slurm = {"SLURM_JOB_ID": "4242", "PATH": f"{stand_in_scontrol(tmp_path / 'bin', log)}{os.pathsep}{os.environ['PATH']}"}
    args = predict_args(model, annotations, out, *ARGS)
    stopped = run_subprocess(args, **slurm, **{KILL_AFTER_BATCH_ENV: "1:USR1"})  # SLURM's time-limit warning
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-2000:]
    assert "received SIGUSR1" in stopped.stderr and "stopped by SIGUSR1" in stopped.stderr
    assert scontrol_calls(log) == ["requeue 4242"]  # scontrol was asked to requeue this job, once
    assert "laser predict: requeued SLURM job 4242" in stopped.stderr
    (path,) = out.glob("predictions.rank*.jsonl")
    assert path.read_bytes().endswith(b"\n")  # whole lines: the batch in flight was finished and flushed
    records = strip(records_by_id(out))  # every line parses; each id once
    assert len(records) == 1 and all(records[i] == reference[i] for i in records)  # the first batch only
    assert not (out / CLAIM_FILE).exists()  # released on the way out

    rerun = run_subprocess(args, **slurm)  # what the requeued job runs
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert strip(records_by_id(out)) == reference  # records_by_id: every id exactly once
    assert scontrol_calls(log) == ["requeue 4242"]  # a run that finishes requeues nothing


def test_requeue_slurm_job_reports_what_scontrol_did(tmp_path, monkeypatch):
    from laser.run.preemption import requeue_slurm_job

    log = tmp_path / "scontrol.log"
    path = os.environ["PATH"]
    assert requeue_slurm_job({}) is None  # outside SLURM: nothing to requeue
    monkeypatch.setenv("PATH", f"{stand_in_scontrol(tmp_path / 'fails', log, 1, 'Job is not requeueable')}{os.pathsep}{path}")
    assert requeue_slurm_job({"SLURM_JOB_ID": "4242"}) == "requeue of SLURM job 4242 failed: Job is not requeueable"
    monkeypatch.setenv("PATH", f"{stand_in_scontrol(tmp_path / 'works', log)}{os.pathsep}{path}")
    assert requeue_slurm_job({"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}) == (
        "requeued SLURM job 4240_2"
    )
    assert scontrol_calls(log) == ["requeue 4242", "requeue 4240_2"]
    assert requeue_slurm_job({"SLURM_JOB_ID": "4242; rm -rf /"}) is None  # not a job id: scontrol not called
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol at all
    outcome = requeue_slurm_job({"SLURM_JOB_ID": "4242"})
    assert outcome.startswith("requeue of SLURM job 4242 failed: ") and "scontrol" in outcome
    assert scontrol_calls(log) == ["requeue 4242", "requeue 4240_2"]


def test_a_ddp_run_holds_one_claim_and_is_not_refused_by_itself(setup, tmp_path):
    root, model, annotations, reference = setup
    out = tmp_path / "ddp"
    args = predict_args(model, annotations, out, *ARGS, "trainer.devices=2", "trainer.strategy=ddp")
    done = run_subprocess(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in use by" not in done.stderr
    records = records_by_id(out)
    assert sorted(records) == sorted(reference)
    assert all(comparable(records[i]) == comparable(reference[i]) for i in reference)
    assert not (out / CLAIM_FILE).exists()
