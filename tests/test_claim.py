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


RACE = """
import json, os, sys, time
from laser.run.claim import FolderClaim, FolderClaimedError
root, rounds, ranks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def attempt(folder, run_id):
    try:
        return {"owner": FolderClaim(folder, run_id).acquire().owner}
    except FolderClaimedError as err:
        return {"refused": str(err)}

out = []
for round_ in range(rounds):
    folder, start, children = f"{root}/r{round_}", time.time() + 0.3, []
    for rank in range(ranks):  # forked from one parent, so all start at once
        read, write = os.pipe()
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            while time.time() < start:
                pass
            os.write(write, json.dumps(attempt(folder, "run-a")).encode() + b"\\n")
            os.read(go_read, 1)  # hold the claim (alive) until the parent has tried a second run
            os._exit(0)
        os.close(write)
        children.append((pid, os.fdopen(read), go_write))
    results = [json.loads(handle.readline()) for _, handle, _ in children]
    second = attempt(folder, "run-b")  # while run-a's ranks are alive
    for pid, handle, go in children:
        os.write(go, b"x")  # (a byte, not EOF: the later children hold copies of the earlier pipes)
        os.waitpid(pid, 0)
        os.close(go)
        handle.close()
    out.append({"ranks": results, "second_run": second})
print(json.dumps(out))
"""


def test_many_ranks_of_one_run_racing_for_a_folder_all_join_and_a_second_run_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-c", RACE, str(tmp_path), "20", "8"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rounds = json.loads(result.stdout)
    for r in rounds:
        assert all("owner" in rank for rank in r["ranks"]), r  # no rank took its own run's claim for another's
        assert sum(rank["owner"] for rank in r["ranks"]) == 1  # exactly one created it
        assert "run-a" in r["second_run"]["refused"]  # another run is still refused


def test_a_claim_being_written_is_read_once_whole_not_taken_for_another_run(tmp_path):
    (tmp_path / CLAIM_FILE).write_text("")  # created, contents not yet written (an O_EXCL writer mid-write)

    def finish():
        time.sleep(0.3)
        plant(tmp_path, run_id="run-a")

    writer = threading.Thread(target=finish)
    writer.start()
    joined = FolderClaim(tmp_path, "run-a").acquire()  # waits for the contents instead of giving up
    writer.join()
    assert not joined.owner


def test_a_new_claim_is_never_visible_empty(tmp_path, monkeypatch):
    seen = []
    real_link = os.link

    def link(src, dst, *a, **k):  # the moment the claim appears, it already holds the whole record
        real_link(src, dst, *a, **k)
        seen.append(read_claim(tmp_path))

    monkeypatch.setattr(claim_module.os, "link", link)
    FolderClaim(tmp_path, "run-a").acquire().release()
    assert [c.run_id for c in seen] == ["run-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left behind
