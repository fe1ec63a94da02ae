"""Prediction files: per-batch writing, torn-line tolerance, resume ids, merging, the config guard."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from laser.records.files import (
    RunConfigMismatch,
    completed_ids,
    merge_records,
    prediction_path,
    read_records,
    repair_torn_tail,
    write_run_config,
)
from laser.run.writer import PredictionWriter


def record(sample_id: str, **extra) -> dict:
    return {
        "sample_id": sample_id,
        "question": "q",
        "answers": ["a"],
        "prediction": "a",
        "error": None,
        **extra,
    }


def write_batches(output_dir: Path, batches: list, rank: int = 0) -> PredictionWriter:
    writer = PredictionWriter(output_dir)
    trainer = SimpleNamespace(global_rank=rank)
    for i, batch in enumerate(batches):
        writer.write_on_batch_end(trainer, None, batch, None, None, i, 0)
    writer.close()
    return writer


def test_writer_appends_one_line_per_record_per_rank(tmp_path: Path) -> None:
    writer = write_batches(
        tmp_path, [[record("a"), record("b", layer=np.int64(14))], None, [], [record("c")]], rank=1
    )
    path = prediction_path(tmp_path, 1)
    assert path.name == "predictions.rank1.jsonl" and writer.written == 3
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["sample_id"] for line in lines] == ["a", "b", "c"]
    assert json.loads(lines[1])["layer"] == 14  # numpy scalar written as a plain number
    write_batches(tmp_path, [record("d")], rank=1)  # a single dict is one record; appends
    assert [r["sample_id"] for r in read_records(tmp_path)] == ["a", "b", "c", "d"]


def test_writer_rejects_records_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="prediction record 'x' cannot be written as JSON"):
        write_batches(tmp_path, [[record("x", box=object())]])
    with pytest.raises(ValueError, match="no 'sample_id'"):
        write_batches(tmp_path, [[{"prediction": "a"}]])
    with pytest.raises(TypeError, match="expected a list of dict records"):
        write_batches(tmp_path, ["just a string"])
    with pytest.raises(ValueError, match="only writes per batch"):
        PredictionWriter(tmp_path, write_interval="epoch")


def test_torn_last_line_is_ignored_then_cut_by_the_writer(tmp_path: Path) -> None:
    path = prediction_path(tmp_path, 0)
    complete = json.dumps(record("a")) + "\n" + json.dumps(record("b")) + "\n"
    path.write_bytes(complete.encode() + b'{"sample_id": "c", "predic')  # crash mid-write
    assert [r["sample_id"] for r in read_records(tmp_path)] == ["a", "b"]
    assert completed_ids(tmp_path) == {"a", "b"}
    write_batches(tmp_path, [[record("c")]])  # reopening repairs the tail before appending
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["sample_id"] for line in lines] == ["a", "b", "c"]


def test_repair_torn_tail_cases(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    good = b'{"sample_id": "a"}\n'
    path.write_bytes(good + b"\x00\x00\x00\n")  # NUL padding left by a crash
    assert repair_torn_tail(path) == 4 and path.read_bytes() == good
    path.write_bytes(good + b'{"sample_id": "b"}')  # complete record, newline missing
    assert repair_torn_tail(path) == 0 and path.read_bytes() == good + b'{"sample_id": "b"}\n'
    path.write_bytes(good)
    assert repair_torn_tail(path) == 0 and path.read_bytes() == good
    torn = b'{"sample_id": "a", "x": "\xc3'  # torn inside a UTF-8 character: 25 ASCII bytes + 1
    path.write_bytes(torn)
    assert repair_torn_tail(path) == 26 and path.read_bytes() == b""


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = prediction_path(tmp_path, 0)
    path.write_text(
        json.dumps(record("a")) + "\nGARBAGE\n" + json.dumps(record("b")) + "\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"predictions.rank0.jsonl, line 2: not a JSON object"):
        read_records(tmp_path)


def test_read_records_orders_ranks_numerically_and_counts_errors_as_done(tmp_path: Path) -> None:
    write_batches(tmp_path, [[record("r10")]], rank=10)
    write_batches(tmp_path, [[record("r2", error="cannot load image x.jpg")]], rank=2)
    (tmp_path / "predictions.rankX.jsonl").write_text("ignored\n", encoding="utf-8")
    assert [r["sample_id"] for r in read_records(tmp_path)] == ["r2", "r10"]
    assert completed_ids(tmp_path) == {"r2", "r10"}
    assert read_records(tmp_path / "absent") == [] and completed_ids(tmp_path / "absent") == set()


def test_merge_records_report(tmp_path: Path) -> None:
    write_batches(tmp_path, [[record("s0", prediction="first"), record("s2"), record("s4")]], rank=0)
    write_batches(
        tmp_path,
        [[record("s1"), record("s3"), record("s0", prediction="padding copy"), record("zz")]],
        rank=1,
    )
    records, report = merge_records(tmp_path, expected_ids=["s0", "s1", "s2", "s3", "s4", "s5"])
    assert [r["sample_id"] for r in records] == ["s0", "s1", "s2", "s3", "s4", "zz"]
    assert records[0]["prediction"] == "first"  # the first copy wins
    assert report == {
        "files": 2,
        "lines": 7,
        "unique": 6,
        "duplicates": {"s0": 1},
        "errors": 0,
        "retryable": [],
        "missing": ["s5"],
        "unexpected": ["zz"],
    }
    records, report = merge_records(tmp_path)
    assert [r["sample_id"] for r in records] == ["s0", "s2", "s4", "s1", "s3", "zz"]
    assert report["missing"] is None and report["unexpected"] is None


# ------------------------------------------------------------- config guard
CONFIG = {
    "model": {"name": "llava", "dtype": "bf16"},
    "method": {"name": "laser", "vaq": {"top_heads": 8}},
    "data": {"format": "textvqa", "batch_size": 1, "num_workers": 0},
    "trainer": {"devices": 1},
    "output_dir": "runs/a",
}


def changed(**dotted) -> dict:
    config = json.loads(json.dumps(CONFIG))
    for key, value in dotted.items():
        node = config
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def test_config_guard_new_same_and_ignored_keys(tmp_path: Path) -> None:
    assert write_run_config(tmp_path, CONFIG, "new") == "new"
    assert json.loads((tmp_path / "run_config.json").read_text()) == CONFIG
    assert write_run_config(tmp_path, changed(model__name="qwen"), "new") == "new"  # no predictions yet
    write_run_config(tmp_path, CONFIG, "new")
    write_batches(tmp_path, [[record("a")]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming an identical config is silent
        assert write_run_config(tmp_path, CONFIG, "new") == "resumed"
        other_devices = changed(
            trainer__devices=4, data__batch_size=8, data__num_workers=4, output_dir="/elsewhere"
        )
        assert write_run_config(tmp_path, other_devices, "new") == "resumed"
    assert prediction_path(tmp_path, 0).exists()


def test_config_guard_refuses_a_different_config(tmp_path: Path) -> None:
    write_run_config(tmp_path, CONFIG, "new")
    write_batches(tmp_path, [[record("a")]])
    new = changed(model__name="qwen", method__vaq__top_heads=4)
    new["method"]["crop"] = {"ratio": 0.5}
    with pytest.raises(RunConfigMismatch) as info:
        write_run_config(tmp_path, new, "new")
    message = str(info.value)
    assert "model.name: 'llava' -> 'qwen'" in message and "method.vaq.top_heads: 8 -> 4" in message
    assert "method.crop.ratio: '<absent>' -> 0.5" in message
    assert "resume=true" in message and "overwrite=true" in message
    assert len(info.value.differences) == 3 and isinstance(info.value, ValueError)
    assert json.loads((tmp_path / "run_config.json").read_text()) == CONFIG  # untouched
    with pytest.warns(UserWarning, match=r"changed config: .*model.name: 'llava' -> 'qwen'"):
        assert write_run_config(tmp_path, new, "resume") == "resumed"
    assert completed_ids(tmp_path) == {"a"}


def test_config_guard_overwrite_and_unknown_provenance(tmp_path: Path) -> None:
    write_batches(tmp_path, [[record("a")]], rank=0)
    write_batches(tmp_path, [[record("b")]], rank=1)
    with pytest.raises(RunConfigMismatch, match="no run_config.json"):
        write_run_config(tmp_path, CONFIG, "new")
    assert write_run_config(tmp_path, changed(model__name="qwen"), "overwrite") == "overwritten"
    assert read_records(tmp_path) == [] and not prediction_path(tmp_path, 1).exists()
    assert json.loads((tmp_path / "run_config.json").read_text())["model"]["name"] == "qwen"
    with pytest.raises(ValueError, match="mode='append'"):
        write_run_config(tmp_path, CONFIG, "append")


# -------------------------------------------------------------- end to end
def test_trainer_predict_writes_and_resumes(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from PIL import Image

    from laser.run.datamodule import VQADataModule

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    lines = [
        json.dumps({"sample_id": f"s{i}", "image": "img.png", "question": "q", "answer": "a"})
        for i in range(5)
    ]
    lines[3] = json.dumps({"sample_id": "s3", "image": "nope.png", "question": "q", "answer": "a"})
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    class Echo(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def predict_step(self, batch, batch_idx):
            return [
                {
                    "sample_id": item["sample_id"],
                    "answers": item["answers"],
                    "error": item["error"],
                    "prediction": None if item["error"] else "a",
                }  # fmt: skip
                for item in batch
            ]

    def run(skip: set[str], limit: int | None) -> None:
        dm = VQADataModule(annotations=tmp_path / "q.jsonl", batch_size=2, limit=limit, skip_ids=skip)
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[PredictionWriter(tmp_path / "out")],
        )  # fmt: skip
        trainer.predict(Echo(), datamodule=dm, return_predictions=False)

    run(set(), limit=3)
    assert completed_ids(tmp_path / "out") == {"s0", "s1", "s2"}
    run(completed_ids(tmp_path / "out"), limit=None)  # resume: only s3, s4 are predicted
    records, report = merge_records(tmp_path / "out", expected_ids=[f"s{i}" for i in range(5)])
    assert report["lines"] == 5 and report["duplicates"] == {} and report["missing"] == []
    assert report["errors"] == 1 and "nope.png" in records[3]["error"]
