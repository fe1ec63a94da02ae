"""`laser predict` / `laser evaluate` over a datamodule: a single-process run, scoring, the output-folder
guard and one-line errors. Runs on 2 processes (DDP on gloo) and resuming after SIGKILL are in
test_reliability_runs.py."""

import json

import pytest
from run_fixtures import predict_args, records_by_id, run_inprocess, run_laser, save_tiny_llava, write_dataset


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
