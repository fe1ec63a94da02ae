"""Runs started by a cluster launcher: every process executes `laser predict` from the start.

- 8 processes started with SLURM's variables only (as `srun` starts them): exactly one (SLURM_PROCID 0)
  writes run_config.json and none crashes. The processes stop where the Trainer would start, so no
  model is loaded.
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
from pathlib import Path

import pytest
from run_fixtures import predict_args, records_by_id, save_tiny_llava, write_dataset

LAUNCH_VARIABLES = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
    "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE",
)

SRUN_TASKS = """
import json, os, sys
import lightning.pytorch as pl
import laser.adapters, laser.run.cli, laser.run.predict  # imported once; the tasks are forked from here

log, tasks, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real_replace = os.replace

def replace(src, dst):  # who writes run_config.json
    if str(dst).endswith("run_config.json"):
        with open(log, "a") as f:
            f.write(os.environ["SLURM_PROCID"] + "\\n")
    return real_replace(src, dst)

def stop(*a, **k):  # where the Trainer would start: no model is loaded
    raise SystemExit(0)

os.replace, pl.Trainer = replace, stop
pids = []
for rank in range(tasks):  # what srun starts: one process per task, told its rank by SLURM_* only
    pid = os.fork()
    if pid == 0:
        os.environ.update(
            SLURM_NTASKS=str(tasks), SLURM_NTASKS_PER_NODE=str(tasks), SLURM_NNODES="1", SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_JOB_ID="4242", SLURM_JOB_NAME="laser",
            SLURM_NODELIST="localhost",
        )
        try:
            code = laser.run.cli.main(["predict", *args])
        except SystemExit as exit:
            code = exit.code or 0
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    pids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))
"""

MARK_TRAINER = """
import sys
import lightning.pytorch as pl

real = pl.Trainer.__init__

def marked(self, *args, **kwargs):  # tells the test this process got as far as the Trainer
    open(sys.argv[1], "w").close()
    real(self, *args, **kwargs)

pl.Trainer.__init__ = marked
from laser.run.cli import main
sys.exit(main(["predict", *sys.argv[2:]]))
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


def test_eight_srun_tasks_one_writes_the_run_config_and_none_crashes(data, tmp_path):
    root, model, annotations = data
    out, log = tmp_path / "run", tmp_path / "writers.txt"
    args = predict_args(model, annotations, out, "trainer.devices=8", "trainer.strategy=ddp", "method=vanilla")
    result = subprocess.run(
        [sys.executable, "-c", SRUN_TASKS, str(log), "8", *args], env=_clean_env(), capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == [0] * 8, result.stderr[-3000:]  # none crashed
    assert log.read_text().split() == ["0"]  # SLURM_PROCID 0 wrote it, once
    assert json.loads((out / "run_config.json").read_text())["method"]["name"] == "vanilla"
    assert not list(out.glob(".run_config.json*"))  # no temporary file left behind


def test_ddp_overwrite_started_by_torchrun_writes_each_sample_once(data, tmp_path):
    root, model, annotations = data
    out = tmp_path / "run"
    out.mkdir()
    stale = [{"sample_id": f"s{i:03d}", "prediction": "stale", "error": None} for i in range(4)]
    (out / "predictions.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    (out / "predictions.rank1.jsonl").write_text(json.dumps(stale[0]) + "\n")
    args = predict_args(
        model, annotations, out, "trainer.devices=2", "trainer.strategy=ddp", "method=vanilla", "overwrite=true"
    )
    port = str(_free_port())

    def start(rank: int, mark: Path) -> subprocess.Popen:
        env = _clean_env(
            TORCHELASTIC_RUN_ID="laser-test", RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0",
            WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
        )
        return subprocess.Popen(
            [sys.executable, "-c", MARK_TRAINER, str(mark), *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    first = start(1, tmp_path / "rank1_at_trainer")
    deadline = time.monotonic() + 180
    while first.poll() is None and not (tmp_path / "rank1_at_trainer").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # rank 1 has read what it reads before the Trainer (or has given up)
    second = start(0, tmp_path / "rank0_at_trainer")
    try:
        codes = [first.wait(timeout=300), second.wait(timeout=300)]
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    errors = [p.stderr.read()[-1500:] for p in (first, second)]
    assert codes == [0, 0], errors
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
        ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}, True, False, "lightning"),  # interactive allocation
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
