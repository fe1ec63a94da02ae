"""The claim of an output folder (laser.run.claim), process by process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from laser.run import claim as claim_module
from laser.run.claim import CLAIM_FILE, FolderClaim, FolderClaimedError, read_claim, run_id_from_environment


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def plant(folder, **fields):
    now = time.time()
    info = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "started": now,
            "heartbeat": now, "command": "laser predict ..."} | fields
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CLAIM_FILE).write_text(json.dumps(info))


def test_second_run_is_refused_naming_the_holder_and_the_same_run_joins(tmp_path):
    first = FolderClaim(tmp_path, "run-a").acquire()
    assert first.owner and read_claim(tmp_path).run_id == "run-a"
    with pytest.raises(FolderClaimedError) as info:
        FolderClaim(tmp_path, "run-b").acquire()
    message = str(info.value)
    assert "run-a" in message and f"pid {os.getpid()}" in message and socket.gethostname() in message
    rank1 = FolderClaim(tmp_path, "run-a").acquire()  # another rank of the same run
    assert not rank1.owner
    rank1.release()
    assert (tmp_path / CLAIM_FILE).exists()  # only the creator releases
    first.release()
    assert not (tmp_path / CLAIM_FILE).exists()


def test_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    plant(tmp_path, pid=dead_pid())
    with pytest.warns(UserWarning, match="stale claim"):
        taker = FolderClaim(tmp_path, "run-new").acquire()
    assert taker.owner and read_claim(tmp_path).run_id == "run-new"
    taker.release()


def test_other_host_is_stale_only_after_its_heartbeat_stops(tmp_path):
    plant(tmp_path, host="node-17", pid=1, heartbeat=time.time() - 10)
    with pytest.raises(FolderClaimedError, match="node-17"):
        FolderClaim(tmp_path, "mine", stale_after=60).acquire()
    plant(tmp_path, host="node-17", pid=1, heartbeat=time.time() - 61)
    with pytest.warns(UserWarning):
        FolderClaim(tmp_path, "mine", stale_after=60).acquire().release()


def test_wait_blocks_until_the_holder_releases(tmp_path, monkeypatch):
    monkeypatch.setattr(claim_module, "WAIT_POLL_SECONDS", 0.05)
    holder = FolderClaim(tmp_path, "holder").acquire()
    threading.Timer(0.3, holder.release).start()
    start = time.monotonic()
    waiter = FolderClaim(tmp_path, "waiter", wait=True).acquire()
    assert time.monotonic() - start >= 0.25 and read_claim(tmp_path).run_id == "waiter"
    waiter.release()


def test_heartbeat_moves_while_held(tmp_path):
    held = FolderClaim(tmp_path, "beating", heartbeat=0.05).acquire()
    first = read_claim(tmp_path).heartbeat
    time.sleep(0.3)
    assert read_claim(tmp_path).heartbeat > first
    held.release()


def test_run_id_comes_from_the_launcher_environment():
    assert run_id_from_environment({"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "3"}) == "slurm-42.3"
    assert run_id_from_environment({"TORCHELASTIC_RUN_ID": "abc"}) == "torchrun-abc"
    assert run_id_from_environment({"LASER_RUN_ID": "x", "SLURM_JOB_ID": "42"}) == "x"
    assert run_id_from_environment({"MASTER_ADDR": "n0", "MASTER_PORT": "29500", "NODE_RANK": "1"}) == "ddp-n0:29500"
    assert run_id_from_environment({}) is None
