"""`laser predict` / `laser evaluate` over a datamodule: 1 vs 2 processes (DDP on gloo), resume after
SIGKILL, the output-folder guard and one-line errors."""

import json
import signal
import subprocess
import time

import pytest
from run_fixtures import (
    comparable,
    laser_command,
    predict_args,
    records_by_id,
    run_inprocess,
    run_laser,
    save_tiny_llava,
    write_dataset,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_llava(root / "model")
    annotations = write_dataset(root / "data", n=8)
    reference = root / "reference"
    code, _, err = run_inprocess("predict", *predict_args(model, annotations, reference, "data.batch_size=3"))
    assert code == 0, err
    return root, model, annotations, reference


def test_single_process_run_writes_every_sample_once(setup):
    root, model, annotations, reference = setup
    records = records_by_id(reference)
    assert sorted(records) == [f"s{i:03d}" for i in range(8)]
    for r in records.values():
        assert set(r) >= {"sample_id", "question", "answers", "prediction", "layer", "vaq", "box", "path", "timings", "error"}
        assert r["error"] is None and r["path"] in ("direct", "contrastive")
    config = json.loads((reference / "run_config.json").read_text())
    assert config["method"]["name"] == "laser"


def test_two_processes_write_the_same_predictions(setup):
    root, model, annotations, reference = setup
    out = root / "ddp"
    result = run_laser("predict", *predict_args(model, annotations, out, "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=2"))
    assert len(list(out.glob("predictions.rank*.jsonl"))) == 2
    two = records_by_id(out)
    one = records_by_id(reference)
    assert sorted(two) == sorted(one)
    assert all(comparable(two[i]) == comparable(one[i]) for i in one)
    assert "8/8 samples" in result.stdout


def test_sigkill_then_rerun_completes_identically(setup):
    root, model, annotations, reference = setup
    out = root / "killed"
    args = predict_args(model, annotations, out, "data.batch_size=1")
    proc = subprocess.Popen(laser_command("predict", *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    target = out / "predictions.rank0.jsonl"
    while time.time() < deadline:
        if target.exists() and target.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = target.read_text().count("\n")
    assert 2 <= partial < 8, f"killed after {partial} records"
    run_laser("predict", *args)
    records = records_by_id(out)
    one = records_by_id(reference)
    assert sorted(records) == sorted(one)
    assert all(comparable(records[i]) == comparable(one[i]) for i in one)


def test_evaluate_scores_and_checks_completeness(setup):
    root, model, annotations, reference = setup
    code, stdout, _ = run_inprocess("evaluate", str(reference))
    assert code == 0
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["complete"] and metrics["overall"]["n"] == 8
    expected = sum(r["prediction"].strip().lower() == "red" for r in records_by_id(reference).values()) / 8
    assert metrics["overall"]["accuracy"] == pytest.approx(expected)
    assert "meta.family" in metrics["groups"] and "overall" in stdout


def test_new_run_into_folder_of_another_config_stops(setup):
    root, model, annotations, reference = setup
    code, _, err = run_inprocess("predict", *predict_args(model, annotations, reference, "method=vanilla"))
    assert code == 2
    assert err.strip().startswith("laser: error:") and "Traceback" not in err
    assert "overwrite=true" in err


def test_bad_commands_give_one_line_errors(setup):
    root, model, annotations, reference = setup
    cases = [
        (["predict", "model=no_such_adapter"], "no_such_adapter"),
        (["predict", *predict_args(model, annotations, root / "x", "data.colour=1")], "data.colour"),
        (["predict", *predict_args(model, annotations, root / "x", "method=lazer")], "lazer"),
        (["predict", *predict_args(model, annotations, root / "x", "method.crop.ratioo=2")], "ratioo"),
        (["evaluate", str(root / "nowhere")], "does not exist"),
        (["frobnicate"], "unknown command"),
    ]
    for args, needle in cases:
        code, _, err = run_inprocess(*args)
        assert code == 2, args
        lines = err.strip().splitlines()
        assert lines[-1].startswith("laser: error:") and needle in lines[-1], err
        assert "Traceback" not in err
    # the installed console script behaves the same (one interpreter start-up)
    result = run_laser("predict", "model=no_such_adapter", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
