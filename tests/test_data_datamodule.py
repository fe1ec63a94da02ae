"""`VQADataModule`: reading, limit/skip, sequential (DDP-shardable) loading, and the data configs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import SequentialSampler

from laser.paths import config_dir
from laser.run.datamodule import DEFAULT_METRICS, METRICS, VQADataModule


def make_jsonl(tmp_path: Path, n: int = 5) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(n):
        Image.new("RGB", (4, 4), (i, i, i)).save(images / f"{i}.png")
        lines.append(
            json.dumps(
                {"sample_id": f"s{i}", "image": f"images/{i}.png", "question": f"q{i}", "answer": str(i)}
            )
        )
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_setup_limit_skip_and_batches(tmp_path: Path) -> None:
    dm = VQADataModule(annotations=make_jsonl(tmp_path), batch_size=2, limit=4, skip_ids={"s1"})
    dm.setup("predict")
    assert [s.sample_id for s in dm.samples] == ["s0", "s1", "s2", "s3"]  # limit before skip
    assert dm.expected_ids == ["s0", "s1", "s2", "s3"]
    assert dm.image_root == tmp_path  # default: the annotation file's folder
    assert dm.metric == "exact"
    loader = dm.predict_dataloader()
    assert isinstance(loader.sampler, SequentialSampler)
    batches = list(loader)
    assert [[item["sample_id"] for item in batch] for batch in batches] == [["s0", "s2"], ["s3"]]
    assert all(item["error"] is None and item["image"].size == (4, 4) for batch in batches for item in batch)
    dm.setup("predict")  # a second setup keeps the samples already read
    assert len(dm.samples) == 4


def test_distributed_predict_sampler_shards_in_order(tmp_path: Path) -> None:
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper

    dm = VQADataModule(annotations=make_jsonl(tmp_path, n=5))
    dm.setup()
    loader = dm.predict_dataloader()
    # what Lightning injects for trainer.predict under DDP: round-robin, no padding
    shards = [
        list(UnrepeatedDistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=r, shuffle=False))
        for r in (0, 1)
    ]
    assert shards == [[0, 2, 4], [1, 3]]


def test_fewer_pending_samples_than_ranks_are_padded(tmp_path: Path) -> None:
    dm = VQADataModule(annotations=make_jsonl(tmp_path, n=5), skip_ids={"s0", "s1", "s2"})
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=4)  # 2 pending samples, 4 ranks: each rank needs one
    ids = [item["sample_id"] for item in dm.predict_dataloader().dataset]
    assert ids == ["s3", "s4", "s4", "s4"]
    dm.skip_ids = {f"s{i}" for i in range(5)}  # nothing pending: stays empty
    assert len(dm.predict_dataloader().dataset) == 0


def test_skip_mode_exposes_reader_errors(tmp_path: Path) -> None:
    path = make_jsonl(tmp_path, n=2)
    path.write_text(path.read_text() + "{broken\n", encoding="utf-8")
    dm = VQADataModule(annotations=path, on_error="skip")
    dm.setup("predict")
    assert len(dm.samples) == 2 and len(dm.errors) == 1 and "line 3" in dm.errors[0]
    with pytest.raises(ValueError, match="line 3: not valid JSON"):
        VQADataModule(annotations=path).setup("predict")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"format": "coco", "annotations": "x"}, "data.format='coco'"),
        ({"annotations": None}, "data.annotations is not set"),
        ({"annotations": "x", "batch_size": 0}, "data.batch_size=0"),
        ({"annotations": "x", "limit": 0}, "data.limit=0"),
        ({"annotations": "x", "metric": "bleu"}, "data.metric='bleu'"),
        ({"annotations": "x", "on_error": "warn"}, "on_error='warn'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        VQADataModule(**kwargs)


def test_dataloader_before_setup_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"setup\(\) has not run"):
        VQADataModule(annotations=make_jsonl(tmp_path)).predict_dataloader()


# ------------------------------------------------------------------ configs
CONFIG_NAMES = ["jsonl", "textvqa", "pope", "aokvqa", "vstar", "gqa", "docvqa"]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_data_config_is_complete_and_builds_a_datamodule(name: str) -> None:
    path = config_dir() / "data" / f"{name}.yaml"
    header = path.read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("#") and "laser predict" in line and f"data={name}" in line for line in header)
    config = OmegaConf.to_container(OmegaConf.load(path))
    assert set(config) - {"choice_mode"} == {
        "format",
        "annotations",
        "image_root",
        "batch_size",
        "num_workers",
        "limit",
        "metric",
    }
    assert "choice_mode" not in config or name == "vstar"  # generate | likelihood: multiple choice only
    assert (
        config["format"] == name and config["metric"] in METRICS and config["metric"] == DEFAULT_METRICS[name]
    )
    # workers decode and preprocess images while the model runs (issue 14)
    assert (config["batch_size"], config["num_workers"], config["limit"]) == (1, 2, None)
    config["annotations"] = config["annotations"] or "questions.jsonl"
    dm = VQADataModule(**config)
    assert dm.format == name and dm.metric == config["metric"]
