"""Reliability of whole runs: a run killed with SIGKILL (before its first batch, after k batches, a DDP
run) then started again with the same command gives every sample exactly once and the same predictions
as an uninterrupted run; the same command with the same seed repeats exactly (greedy and sampling, 1 and
2 processes, and 2 processes equal 1); and a run never overwrites another configuration's predictions
unless told to (resume=true / overwrite=true).

The kill point is exact, whatever the machine's speed: the prediction writer's test hook
(`LASER_TEST_KILL_AFTER_BATCH=k`, laser/run/writer.py) makes the process SIGKILL itself right after its
k-th batch is on disk. One saved tiny model (112 px, 64 visual tokens) and one uninterrupted reference
per decoding mode."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

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

from laser.run.writer import KILL_AFTER_BATCH_ENV

N = 5
GREEDY = ("data.batch_size=1", "method.decode.max_new_tokens=2")
SAMPLING = ("data.batch_size=2", "method.decode.max_new_tokens=3", "method.decode.do_sample=true", "seed=7")
DDP = ("trainer.devices=2", "trainer.strategy=ddp")


def same_predictions(a: dict, b: dict) -> bool:
    """Every field but the wall-clock timings."""
    strip = lambda r: {k: v for k, v in r.items() if k != "timings"}  # noqa: E731
    return sorted(a) == sorted(b) and all(strip(a[i]) == strip(b[i]) for i in a)




@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    model = save_tiny_llava(root / "model", image_size=112)
    annotations = write_dataset(root / "data", n=N, sizes=((160, 120), (120, 160), (112, 112)))
    greedy = root / "greedy"
    assert predict_in_process(*predict_args(model, annotations, greedy, *GREEDY)) == 0
    return root, model, annotations, records_by_id(greedy)


def lines(out: Path, pattern: str = "predictions.rank*.jsonl") -> int:
    return sum(p.read_bytes().count(b"\n") for p in out.glob(pattern))


def live_processes(group: int) -> list[int]:
    """Pids of the process group's processes that are still running (not zombies)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(pgrp) == group and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def run_killed(args: list[str], after_batch: int) -> None:
    """`laser predict args` in its own process group, every process of which (a DDP worker too) kills
    itself through the writer's hook once it has written `after_batch` batches."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", KILL_AFTER_BATCH_ENV: str(after_batch)}
    with tempfile.TemporaryFile() as err:  # not a pipe: a DDP worker outliving the launcher would hold it
        proc = subprocess.Popen(
            laser_command("predict", *args), stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
        )
        try:
            proc.wait(timeout=300)
            deadline = time.monotonic() + 120
            while live_processes(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not live_processes(proc.pid), "a process of the run did not reach its kill point"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        err.seek(0)
        assert proc.returncode == -signal.SIGKILL, f"the run was not killed ({proc.returncode}): {err.read()[-2000:]!r}"


def test_sigkill_before_the_first_batch_and_after_k_batches_then_rerun_is_identical(setup):
    root, model, annotations, greedy = setup
    out = root / "killed"
    args = predict_args(model, annotations, out, *GREEDY)  # one batch is one sample
    run_killed(args, after_batch=0)  # model loaded, nothing predicted yet
    assert (out / "run_config.json").exists() and lines(out) == 0
    run_killed(args, after_batch=2)
    assert lines(out) == 2
    assert predict_in_process(*args) == 0  # the same command again
    assert same_predictions(records_by_id(out), greedy)  # records_by_id: every id exactly once


def test_sampling_repeats_exactly_and_a_killed_ddp_run_resumes_on_one_process_to_the_same_samples(setup):
    root, model, annotations, greedy = setup
    out = root / "sampled"
    args = predict_args(model, annotations, out, *SAMPLING)
    assert predict_in_process(*args) == 0
    first = records_by_id(out)
    assert predict_in_process(*args, "overwrite=true") == 0  # the same command again, from scratch
    assert same_predictions(records_by_id(out), first)
    assert any(first[i]["prediction"] != greedy[i]["prediction"] for i in greedy)  # it did sample

    two = root / "sampled_ddp"  # 2 processes, each killed after its first batch (2 samples)
    ddp_args = predict_args(model, annotations, two, *SAMPLING, *DDP)
    run_killed(ddp_args, after_batch=1)
    assert [lines(two, f"predictions.rank{r}.jsonl") for r in (0, 1)] == [2, 2]
    assert predict_in_process(*predict_args(model, annotations, two, *SAMPLING)) == 0  # resumed on 1 process
    records = records_by_id(two)
    assert sorted(records) == sorted(first)
    assert all(comparable(records[i]) == comparable(first[i]) for i in first)  # 2 processes wrote what 1 did


def test_output_of_another_config_is_never_overwritten_by_accident(setup, tmp_path, capsys):
    root, model, annotations, greedy = setup
    out = tmp_path / "out"
    shutil.copytree(root / "greedy", out)
    assert predict_in_process(*predict_args(model, annotations, out, *GREEDY)) == 0  # same config: nothing to do
    assert "0 predicted now, 5 already there" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    changed = predict_args(model, annotations, out, "data.batch_size=1", "method=vanilla", "method.decode.max_new_tokens=2")
    assert predict_in_process(*changed) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("laser: error:") and "\n" not in err
    assert "already holds predictions from a different run config" in err and "method.localize" in err
    assert "resume=true" in err and "overwrite=true" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    # resume=true: the old predictions stay, only missing samples are predicted with the new config
    rank0 = out / "predictions.rank0.jsonl"
    rank0.write_text("".join(rank0.read_text().splitlines(keepends=True)[:2]))
    with pytest.warns(UserWarning, match="resuming .* with a changed config"):
        assert predict_in_process(*changed, "resume=true") == 0
    records = records_by_id(out)
    kept = sorted(greedy)[:2]
    assert sorted(records) == sorted(greedy)
    assert all(records[i] == greedy[i] for i in kept)
    assert all(records[i]["method"] == "vanilla" for i in records if i not in kept)
    assert json.loads((out / "run_config.json").read_text())["method"]["name"] == "vanilla"

    # overwrite=true: every old prediction is deleted and the run starts over
    assert predict_in_process(*predict_args(model, annotations, out, *GREEDY), "overwrite=true") == 0
    assert same_predictions(records_by_id(out), greedy)


def test_ddp_padding_items_are_never_written():
    """A resumed DDP run with fewer pending samples than ranks pads the dataset so every rank gets an
    item; the filler items yield no record, so no sample is written twice."""
    from laser.data import VQADataset, VQASample
    from laser.run.lightning import LaserModule

    dataset = VQADataset([VQASample("a", "a.png", "q?", ["x"])])
    dataset.pad_to(3)
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 3 and [bool(item.get("padding")) for item in items] == [False, True, True]
    module = LaserModule(model="unused", method="vanilla")  # no engine: a filler batch never reaches it
    assert module.predict_step(items[1:]) == []
