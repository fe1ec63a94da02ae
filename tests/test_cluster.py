"""Runs started by a cluster launcher: every process executes `laser predict` from the start.

- 8 processes started with SLURM's variables only (as `srun` starts them, also inside an `salloc` shell,
  where the job is named `bash`), 10 start-ups in a row with `overwrite=true`: exactly one process
  (SLURM_PROCID 0) writes run_config.json and deletes the old predictions, none crashes, every task
  reaches the Trainer as a SLURM rank. The processes stop where the Trainer would start, so no model is
  loaded.
- A 2-process DDP run started by torchrun-style variables with `overwrite=true` into a folder of old
  predictions, rank 1 starting first: rank 1 does not list the folder before rank 0 has settled it,
  and the run ends with every sample exactly once, all new.
- `detect_launch` follows Lightning's cluster environments.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from run_fixtures import predict_args, records_by_id, save_tiny_llava, write_dataset

LAUNCH_VARIABLES = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
    "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE",
)

SRUN_TASKS = """
import json, os, sys
from pathlib import Path
import lightning.pytorch as pl
import laser.adapters, laser.cli, laser.run.predict  # imported once; the tasks are forked from here

log, tasks, trials, job_name, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
real_replace, real_unlink = os.replace, Path.unlink

def note(*words):
    with open(log, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")

def replace(src, dst):  # who writes run_config.json
    if str(dst).endswith("run_config.json"):
        note("config", os.environ["SLURM_PROCID"], Path(dst).parent.name)
    return real_replace(src, dst)

def unlink(path, *a, **k):  # who deletes old predictions
    if path.name.startswith("predictions"):
        note("delete", os.environ["SLURM_PROCID"], path.parent.name)
    return real_unlink(path, *a, **k)

def stop(*a, plugins=(), **k):  # where the Trainer would start: no model is loaded
    note("trainer", os.environ["SLURM_PROCID"], ",".join(type(p).__name__ for p in plugins) or "-")
    raise SystemExit(0)

os.replace, Path.unlink, pl.Trainer = replace, unlink, stop
codes = []
for trial in range(trials):
    out = args[-1].removeprefix("output_dir=") + f"/t{trial}"
    os.makedirs(out)
    with open(out + "/predictions.rank0.jsonl", "w") as f:  # old predictions (overwrite=true deletes them)
        f.write(json.dumps({"sample_id": "s000", "prediction": "old", "error": None}) + "\\n")
    pids = []
    for rank in range(tasks):  # what srun starts: one process per task, told its rank by SLURM_* only
        pid = os.fork()
        if pid == 0:
            os.environ.update(
                SLURM_NTASKS=str(tasks), SLURM_NTASKS_PER_NODE=str(tasks), SLURM_NNODES="1",
                SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_JOB_ID=str(4242 + trial),
                SLURM_STEP_ID="0", SLURM_JOB_NAME=job_name, SLURM_NODELIST="localhost",
            )
            try:
                code = laser.cli.main(["predict", *args[:-1], f"output_dir={out}"])
            except SystemExit as exit:
                code = exit.code or 0
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    codes.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids])
print(json.dumps(codes))
"""

MARK_TRAINER = """
import os, sys
from pathlib import Path
import lightning.pytorch as pl
import laser.run.predict as predict

log, folder, rank = sys.argv[1], os.path.realpath(sys.argv[2]), os.environ["RANK"]

def note(*words):  # one line per event, appended in the order the two processes do them
    with open(log, "a") as f:
        f.write(" ".join(words) + "\\n")

def watched(real):  # who lists the output folder
    def listing(path=".", *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.path.realpath(path) == folder:
            note("list", rank)
        return real(path, *args, **kwargs)
    return listing

os.listdir, os.scandir = watched(os.listdir), watched(os.scandir)
Path.iterdir, Path.glob, Path.rglob = watched(Path.iterdir), watched(Path.glob), watched(Path.rglob)
real_settle, real_init = predict.settle_output, pl.Trainer.__init__

def settle(*args, **kwargs):  # when this rank is done with settling (rank 0) or checking (the others)
    action = real_settle(*args, **kwargs)
    note("settled", rank, action)
    return action

def marked(self, *args, **kwargs):  # this process got as far as the Trainer
    note("trainer", rank)
    real_init(self, *args, **kwargs)

predict.settle_output, pl.Trainer.__init__ = settle, marked
from laser.cli import main
sys.exit(main(["predict", *sys.argv[3:]]))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    return root, save_tiny_llava(root / "model", image_size=112), write_dataset(root / "data", n=4)


SRUN_TRIALS = 10
"""Start-ups of 8 tasks per case: the claim race crashed 6 of 8 tasks in about 1 start-up of 7."""


@pytest.mark.parametrize("job_name", ["laser", "bash"])  # bash: srun inside an salloc shell
def test_eight_srun_tasks_one_settles_the_folder_and_none_crashes(data, tmp_path, job_name):
    root, model, annotations = data
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    args = predict_args(model, annotations, out, "trainer.devices=8", "trainer.strategy=ddp", "method=vanilla",
                        "overwrite=true")
    args.append(args.pop(args.index(f"output_dir={out}")))  # the script reads the folder from the last argument
    result = subprocess.run(
        [sys.executable, "-c", SRUN_TASKS, str(log), "8", str(SRUN_TRIALS), job_name, *args], env=_clean_env(),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == [[0] * 8] * SRUN_TRIALS, result.stderr[-3000:]  # none crashed, in any start-up
    lines = [line.split() for line in log.read_text().splitlines()]
    trials = [f"t{t}" for t in range(SRUN_TRIALS)]
    assert sorted(w[2] for w in lines if w[0] == "config" and w[1] == "0") == trials
    assert [w for w in lines if w[0] in ("config", "delete") and w[1] != "0"] == []  # only rank 0 settles
    assert sorted(w[2] for w in lines if w[0] == "delete") == trials  # the old predictions, once each
    trainers = [w for w in lines if w[0] == "trainer"]
    assert len(trainers) == 8 * SRUN_TRIALS  # every task reaches the Trainer as one rank...
    expected = "-" if job_name == "laser" else "SLURMEnvironment"  # ...told it is SLURM-managed
    assert {w[2] for w in trainers} == {expected}
    for t in trials:
        assert json.loads((out / t / "run_config.json").read_text())["method"]["name"] == "vanilla"
        assert not list((out / t).glob(".run_config.json*"))  # no temporary file left behind
        assert not list((out / t).glob(".laser_claim.json*"))  # no claim or claim file left behind


def test_ddp_overwrite_started_by_torchrun_writes_each_sample_once(data, tmp_path):
    root, model, annotations = data
    out, log = tmp_path / "run", tmp_path / "events.txt"
    out.mkdir()
    stale = [{"sample_id": f"s{i:03d}", "prediction": "stale", "error": None} for i in range(4)]
    (out / "predictions.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    (out / "predictions.rank1.jsonl").write_text(json.dumps(stale[0]) + "\n")
    args = predict_args(
        model, annotations, out, "trainer.devices=2", "trainer.strategy=ddp", "method=vanilla", "overwrite=true"
    )
    port = str(_free_port())

    def start(rank: int) -> subprocess.Popen:
        env = _clean_env(
            TORCHELASTIC_RUN_ID="laser-test", RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0",
            WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
        )
        with (tmp_path / f"rank{rank}.err").open("w") as err:  # a file: no pipe to fill while we wait
            return subprocess.Popen([sys.executable, "-c", MARK_TRAINER, str(log), str(out), *args],
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)

    def events() -> list[list[str]]:
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    def errors() -> str:
        files = [tmp_path / f"rank{rank}.err" for rank in (1, 0)]
        return "\n".join(f"{f.name}: {f.read_text()[-1500:]}" for f in files if f.exists())

    first = start(1)
    second = None
    try:
        deadline = time.monotonic() + 300  # a bound on start-up, not a timing window: the test fails past it
        while ["trainer", "1"] not in events() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        # rank 1 is at the Trainer, waiting there for rank 0, which has not started yet
        assert ["trainer", "1"] in events(), f"rank 1 never reached the Trainer:\n{errors()}"
        assert first.poll() is None, f"rank 1 ended without rank 0:\n{errors()}"
        second = start(0)
        codes = [first.wait(timeout=300), second.wait(timeout=300)]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0], errors()
    lines = events()
    assert lines.count(["settled", "0", "overwritten"]) == 1, lines  # rank 0 deleted the old predictions
    settled = lines.index(["settled", "0", "overwritten"])
    assert lines.index(["trainer", "1"]) < lines.index(["trainer", "0"]) and lines.index(["trainer", "1"]) < settled
    assert ["list", "1"] not in lines[:settled], lines  # rank 1 did not look into the folder before it was settled
    records = records_by_id(out)  # asserts each sample_id appears once
    assert sorted(records) == [f"s{i:03d}" for i in range(4)]
    assert all(r["prediction"] != "stale" and r["path"] == "direct" for r in records.values())


@pytest.mark.parametrize(
    "variables, main, independent, kind",
    [
        ({}, True, False, "lightning"),
        ({"LOCAL_RANK": "1"}, False, False, "lightning"),  # a worker of Lightning's launcher
        ({"NODE_RANK": "1"}, False, True, "lightning"),  # the launcher of a second node
        ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
          "SLURM_NODEID": "0", "SLURM_JOB_NAME": "x"}, True, True, "slurm"),
        ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "3",
          "SLURM_NODEID": "0", "SLURM_JOB_NAME": "x"}, False, True, "slurm"),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
          "SLURM_JOB_NAME": "x"}, True, False, "slurm"),
        ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}, True, False, "lightning"),  # an salloc shell itself
        ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "2",
          "SLURM_NODEID": "0", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "bash"}, False, True, "slurm"),  # srun in it
        ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
          "SLURM_NODEID": "0", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "interactive"}, True, True, "slurm"),
        ({"TORCHELASTIC_RUN_ID": "x", "RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "GROUP_RANK": "1"},
         False, True, "torchelastic"),
    ],
)
def test_detect_launch_follows_lightning_cluster_environments(monkeypatch, variables, main, independent, kind):
    from laser.run.predict import detect_launch


    for name in list(os.environ):
        if name in LAUNCH_VARIABLES or name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    launch = detect_launch()
    assert (launch.kind, launch.main, launch.independent) == (kind, main, independent)
    if kind == "lightning":  # several nodes, each started by hand: independent processes
        assert detect_launch(num_nodes=2).independent


def test_every_rank_skips_what_rank_zero_found_done_and_an_idle_run_loads_no_model():
    from types import SimpleNamespace

    from laser.run.predict import SettledOutput

    sent = []

    def broadcast(obj, src=0):
        sent.append(obj)
        return ["s000", "s001"]  # what rank 0 sent

    for rank, done, expected, idle in ((0, {"s001", "s000"}, ["s000", "s001", "s002"], False),
                                       (1, None, ["s000", "s001", "s002"], False),
                                       (1, None, ["s000", "s001"], True)):
        datamodule = SimpleNamespace(skip_ids=set(), expected_ids=expected)
        trainer = SimpleNamespace(global_rank=rank, datamodule=datamodule, strategy=SimpleNamespace(broadcast=broadcast))
        module = SimpleNamespace(idle=False)
        SettledOutput(done).setup(trainer, module, "predict")
        assert datamodule.skip_ids == {"s000", "s001"} and module.idle is idle
    assert sent == [["s000", "s001"], None, None]  # only rank 0 lists the folder
