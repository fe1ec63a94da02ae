"""`laser predict ... trainer.logger=csv|tensorboard|wandb|mlflow`: the run's logs are written, with the
per-batch figures and, at the end, `laser evaluate`'s metrics and a sample table."""

import csv
import glob
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from run_fixtures import predict_args, records_by_id, run_inprocess, save_tiny_llava, write_dataset

from laser.run.tracking import batch_figures, make_logger


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    return root, save_tiny_llava(root / "model"), write_dataset(root / "data", n=5)


def _predict(setup, name: str, *extra: str):
    root, model, annotations = setup
    out = root / name
    code, _, err = run_inprocess("predict", *predict_args(model, annotations, out, "data.batch_size=2", *extra))
    assert code == 0, err
    return out, json.loads((out / "metrics.json").read_text())


def test_csv_logger_writes_batches_final_metrics_and_samples(setup):
    out, metrics = _predict(setup, "csv", "trainer.logger=csv")
    rows = list(csv.DictReader((out / "logs/version_0/metrics.csv").open()))
    batches = [r for r in rows if r["batch/samples"]]
    assert [float(r["batch/samples"]) for r in batches] == [2.0, 2.0, 1.0]  # 5 samples, batches of 2
    assert all(float(r["batch/errors"]) == 0 and float(r["batch/samples_per_s"]) > 0 for r in batches)
    final = [r for r in rows if r["final/accuracy"]]
    assert len(final) == 1
    assert float(final[0]["final/accuracy"]) == pytest.approx(metrics["overall"]["accuracy"])
    assert float(final[0]["final/samples"]) == 5
    samples = list(csv.DictReader((out / "logs/version_0/samples.csv").open()))
    assert [s["sample_id"] for s in samples] == sorted(records_by_id(out))


def _events(path: str):
    """The `Event` protos of a TensorBoard event file (TFRecord: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    raw = open(path, "rb").read()
    at = 0
    while at < len(raw):
        (length,) = struct.unpack("<Q", raw[at : at + 8])
        event = Event()
        event.ParseFromString(raw[at + 12 : at + 12 + length])
        yield event
        at += 12 + length + 4


def test_tensorboard_logger_writes_event_files_with_the_final_accuracy(setup):
    out, metrics = _predict(setup, "tb", "trainer.logger=tensorboard")
    scalars = {}
    for path in glob.glob(str(out / "logs/version_0/events.out.tfevents.*")):
        for event in _events(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
    assert scalars["final/accuracy"] == [pytest.approx(metrics["overall"]["accuracy"])]
    assert len(scalars["batch/samples"]) == 3
    assert (out / "logs/version_0/samples.csv").is_file()


def _wandb_records(path: str):
    """The records of a `.wandb` transaction log (wandb's own reader left the package in 0.2x): a 7-byte
    header (b":W&B", version, ident), then LevelDB's log format: 32 KiB blocks of chunks with a 7-byte header
    (crc32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last)."""
    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    at, pending, block = 7, b"", 32768
    while at + 7 <= len(raw):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[at : at + 7])
        if kind == 0 and length == 0:
            break
        chunk = raw[at + 7 : at + 7 + length]
        at += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def test_offline_wandb_run_records_the_final_metrics(setup, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, metrics = _predict(setup, "wandb", "trainer.logger=wandb")
    (path,) = glob.glob(str(out / "wandb/offline-run-*/run-*.wandb"))
    logged = {}
    for data in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                logged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert logged["final/accuracy"] == pytest.approx(metrics["overall"]["accuracy"])
    assert logged["final/samples"] == 5
    assert glob.glob(str(out / "wandb/offline-run-*/files/media/table/samples_*.table.json"))


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (the loggers extra)")
def test_mlflow_file_store_records_the_final_metrics(setup, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, metrics = _predict(setup, "mlflow", "trainer.logger=mlflow")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("laser").experiment_id])
    assert run.data.metrics["final/accuracy"] == pytest.approx(metrics["overall"]["accuracy"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["samples.csv"]


def test_an_unknown_logger_is_an_error_naming_the_key(setup, tmp_path):
    with pytest.raises(ValueError, match=r"trainer.logger='neptune'.*csv \| tensorboard \| wandb \| mlflow"):
        make_logger("neptune", tmp_path)
    assert make_logger(None, tmp_path) is False and make_logger("none", tmp_path) is False
    root, model, annotations = setup
    code, _, err = run_inprocess("predict", *predict_args(model, annotations, root / "bad", "trainer.logger=neptune"))
    assert code == 2 and "trainer.logger='neptune'" in err and "Traceback" not in err
    assert not (root / "bad").exists()  # refused before the output folder was made


def test_batch_figures_count_errors_and_vanilla_retries():
    records = [
        {"error": None, "fallback": None},
        {"error": "ValueError: bad image", "fallback": None},
        {"error": None, "fallback": "non-finite logits; answered with vanilla decoding"},
    ]
    figures = batch_figures(records, seconds=0.5)
    assert figures["batch/samples"] == 3 and figures["batch/errors"] == 1 and figures["batch/retries"] == 1
    assert figures["batch/samples_per_s"] == 6.0
