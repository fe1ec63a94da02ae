"""A user's own data module: the batch contract of `LaserModule` (laser.run.batch)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from laser import LaserModule, PredictionWriter
from laser.data import collate_samples
from laser.paths import assets_dir
from laser.run.batch import BatchContractError, check_batch

IMAGE = Image.new("RGB", (64, 64), (10, 200, 10))


class ListData(pl.LightningDataModule):
    def __init__(self, samples, collate=collate_samples):
        super().__init__()
        self.samples, self.collate = samples, collate

    def predict_dataloader(self):
        return DataLoader(self.samples, batch_size=2, collate_fn=self.collate)


def run(samples, tmp_path, collate=collate_samples):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[PredictionWriter(tmp_path)])
    module = LaserModule(model=str(assets_dir() / "testbed" / "model"), method="vanilla")
    trainer.predict(module, datamodule=ListData(samples, collate), return_predictions=False)


def test_missing_question_fails_at_the_first_batch_naming_key_and_sample(tmp_path):
    samples = [{"sample_id": "a", "question": "Is there a green box?", "image": IMAGE},
               {"sample_id": "b", "image": IMAGE}]
    with pytest.raises(BatchContractError) as info:
        run(samples, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "'question'" in message and "sample_id='b'" in message and "batch 0" in message
    assert not list(tmp_path.glob("predictions.rank*.jsonl")) or all(
        p.read_text() == "" for p in tmp_path.glob("predictions.rank*.jsonl"))


def test_default_collation_is_named_as_the_mistake():
    from torch.utils.data import default_collate

    batch = default_collate([{"sample_id": "a", "question": "q?"}, {"sample_id": "b", "question": "r?"}])
    with pytest.raises(BatchContractError, match="collate_fn=laser.run.data.collate_samples"):
        check_batch(batch, 3)


def test_a_conforming_own_data_module_is_answered_and_extra_keys_are_ignored(tmp_path):
    import json

    samples = [{"sample_id": f"s{i}", "question": "Is there a green box?", "image": IMAGE, "answers": ["yes"],
                "meta": {"k": i}, "my_extra": object()} for i in range(3)]
    samples.append({"sample_id": "broken", "question": "Is there a green box?", "image": None,
                    "error": "unreadable file x.png"})
    run(samples, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "predictions.rank0.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in records] == ["s0", "s1", "s2", "broken"]
    assert all("my_extra" not in r for r in records)
    assert records[1]["meta"] == {"k": 1} and records[1]["prediction"] is not None
    assert records[3]["error"] == "unreadable file x.png"
