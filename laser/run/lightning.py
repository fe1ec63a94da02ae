"""`LaserModule`: the engine inside Lightning's predict loop (docs/method.md, "Lightning").

The model is loaded in `configure_model`, once per process, straight onto that process's device (or
over several devices with a `device_map`). It is deliberately not a submodule of the LightningModule:
Lightning never moves it (a sharded model stays sharded), converts it, or copies it to host memory
at teardown. `predict_step` returns one JSON record per sample; a failed sample becomes a record with
`error` while the run goes on (`answering`: out of memory and device faults are `"retryable": true`).
No collectives inside `predict_step`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from ..loading import load_engine, method_spec, sample_seed
from ..method.config import LaserConfig
from ..method.engine import LaserEngine
from .answering import answer_samples, make_record, score_samples
from .batch import check_batch


class LaserModule(pl.LightningModule):
    """Runs one method over a datamodule's batches (lists of sample dicts)."""

    def __init__(
        self,
        model: str | dict[str, Any],
        method: LaserConfig | dict[str, Any] | str = "laser",
        seed: int = 0,
        engine: LaserEngine | None = None,
        load: dict[str, Any] | None = None,
    ):
        """`model`: a model preset, checkpoint folder, hub id or adapter name, or its settings
        ({"name_or_path", "adapter", "dtype", ...}, `laser.loading.model_spec`). `load`: more
        `from_pretrained` arguments (`device_map`, `attn_implementation`, `max_memory`,
        `processor_kwargs`), from the `model.*` keys of `laser predict`."""
        super().__init__()
        self.model = dict(model) if isinstance(model, dict) else str(model)
        self.seed = seed
        self.load = dict(load or {})
        self.method = method_spec(method)
        # A plain attribute, not a submodule: Lightning must not move, convert or offload the model.
        self.engine = engine
        self.idle = False  # set when no rank has a sample left: the model is then not loaded

    def configure_model(self) -> None:
        if self.engine is not None or self.idle:
            return
        self.engine = load_engine(self.model, self.method, device=self._root_device(), load=self.load)

    def _root_device(self) -> torch.device:
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def image_preprocessor(self) -> Any:
        """The engine's per-image preprocessing, for the datamodule's workers (None if unavailable)."""
        if self.engine is None:
            return None
        try:
            return self.engine.image_preprocessor()
        except Exception:  # the engine preprocesses in this process instead
            return None

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> list[dict[str, Any]]:
        """One record per sample of `batch` (the contract is in `laser.run.batch`)."""
        batch = check_batch(batch, batch_idx)
        batch = [sample for sample in batch if not sample.get("padding")]  # DDP filler: no record
        records: list[dict[str, Any] | None] = [None] * len(batch)
        ready = []
        for i, sample in enumerate(batch):
            if sample.get("error") is not None or sample.get("image") is None:
                records[i] = make_record(sample, None, sample.get("error") or "no image")
            else:
                ready.append(i)
        if ready:
            for i, outcome in zip(ready, self._answer([batch[i] for i in ready])):
                records[i] = outcome
        return records  # type: ignore[return-value]

    def _answer(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records of `samples` answered as one batch, one by one if that fails (`answering.answer_samples`);
        samples with `score_options` have their choices ranked instead (`answering.score_samples`)."""
        answers: list[Any] = [None] * len(samples)
        ranked = [i for i, s in enumerate(samples) if s.get("score_options")]
        generated = [i for i, s in enumerate(samples) if not s.get("score_options")]
        for members, run in ((generated, answer_samples), (ranked, score_samples)):
            if not members:
                continue
            group = [samples[i] for i in members]
            args = [[s["image"] for s in group], [s["question"] for s in group]]
            if run is score_samples:
                args.append([s["choices"] for s in group])
            seeds = [sample_seed(self.seed, s["sample_id"]) for s in group]
            features = [s.get("image_features") for s in group]  # from the DataLoader workers, if any
            for i, answer in zip(members, run(self.engine, *args, seeds, features)):
                answers[i] = answer
        return [make_record(s, a.prediction, a.error, a.retryable) for s, a in zip(samples, answers)]

