"""A run owns its output folder (laser.run.claim) and stops cleanly when preempted (laser.run.preemption).

End to end through `laser predict`: a second launch on a claimed folder is refused naming the holder and
writes nothing; a SIGKILLed holder's claim is taken over and the run ends with each sample once; SIGTERM
in the middle of a run stops it after the batch in flight, and the rerun completes with the predictions of
an uninterrupted run; a 2-process DDP run holds one claim and is not refused by itself.
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
