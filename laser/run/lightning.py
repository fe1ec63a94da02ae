"""`LaserModule`: the engine inside Lightning's predict loop (docs/method.md, "Lightning").

The model is loaded in `configure_model` on each process's own device; `predict_step` returns one
JSON record per sample, a failed sample becoming a record with `error` while the run goes on.
No collectives inside `predict_step`.
"""

from __future__ import annotations

import copy
import traceback
from typing import Any

import lightning.pytorch as pl

from ..method.config import LaserConfig
from ..method.decoding import NONFINITE_LOGITS
from ..method.engine import LaserEngine
from ..method.prediction import Prediction
from .batch import check_batch
from .loading import resolve_dtype, sample_seed


class LaserModule(pl.LightningModule):
    """Runs one method over a datamodule's batches (lists of sample dicts)."""

    def __init__(
        self,
        model: str,
        method: LaserConfig | dict[str, Any] | str = "laser",
        adapter: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        engine: LaserEngine | None = None,
    ):
        super().__init__()
        self.model_ref = str(model)
        self.adapter_name = adapter
        self.dtype_name = dtype
        self.seed = seed
        if isinstance(method, str):
            method = LaserConfig.preset(method)
        elif isinstance(method, dict):
            method = LaserConfig.from_dict(method)
        self.method = method
        self.engine = engine
        if engine is not None:
            self.lvlm = engine.adapter.model

    def configure_model(self) -> None:
        if self.engine is not None:
            return
        from ..adapters import create_adapter

        dtype = resolve_dtype(self.dtype_name, self.device)
        adapter = create_adapter(self.model_ref, adapter=self.adapter_name, dtype=dtype)
        adapter.model.eval().requires_grad_(False)
        self.lvlm = adapter.model  # a submodule, so Lightning moves it to this process's device
        self.engine = LaserEngine(adapter, self.method)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> list[dict[str, Any]]:
        """One record per sample of `batch` (the contract is in `laser.run.batch`)."""
        batch = check_batch(batch, batch_idx)
        batch = [sample for sample in batch if not sample.get("padding")]  # DDP filler: no record
        records: list[dict[str, Any] | None] = [None] * len(batch)
        ready = []
        for i, sample in enumerate(batch):
            if sample.get("error") is not None or sample.get("image") is None:
                records[i] = self._record(sample, None, sample.get("error") or "no image")
            else:
                ready.append(i)
        if ready:
            for i, outcome in zip(ready, self._answer([batch[i] for i in ready])):
                records[i] = outcome
        return records  # type: ignore[return-value]

    def _answer(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer as one batch; if that fails, answer one by one so only the bad sample fails."""
        try:
            predictions = self._engine_batch(samples)
            return [self._checked(s, p) for s, p in zip(samples, predictions)]
        except Exception:
            if len(samples) == 1:
                return [self._record(samples[0], None, _describe_error())]
        out = []
        for sample in samples:
            try:
                out.append(self._checked(sample, self._engine_batch([sample])[0]))
            except Exception:
                out.append(self._record(sample, None, _describe_error()))
        return out

    def _checked(self, sample: dict[str, Any], pred: Prediction) -> dict[str, Any]:
        """The record of `pred`, unless its own logits went NaN/inf (say, float16 overflow): then the
        sample is answered again with vanilla decoding (the `fallback` field says why), and if that
        fails too (or the method is vanilla already) it becomes an error record."""
        if not (pred.fallback or "").startswith(NONFINITE_LOGITS):
            return self._record(sample, pred, None)
        reason = f"{pred.fallback} on the {pred.path} path"
        running = self.engine.config
        if not running.localize and running.decode.mode == "direct":  # vanilla already: nothing to fall back to
            return self._record(sample, None, f"NonFiniteLogits: {reason}; no answer")
        vanilla = copy.deepcopy(running)
        vanilla.localize, vanilla.crop.enabled, vanilla.decode.mode = False, False, "direct"
        self.engine.config = vanilla
        try:
            retry = self._engine_batch([sample])[0]
        finally:
            self.engine.config = running
        if (retry.fallback or "").startswith(NONFINITE_LOGITS):
            return self._record(sample, None, f"NonFiniteLogits: {reason}, and {retry.fallback} with vanilla decoding")
        retry.path, retry.method = "vanilla", pred.method
        retry.fallback = f"{reason}; answered with vanilla decoding"
        return self._record(sample, retry, None)

    def _engine_batch(self, samples: list[dict[str, Any]]) -> list[Prediction]:
        seeds = [sample_seed(self.seed, s["sample_id"]) for s in samples]
        return self.engine.answer_batch([s["image"] for s in samples], [s["question"] for s in samples], seeds)

    @staticmethod
    def _record(sample: dict[str, Any], pred: Prediction | None, error: str | None) -> dict[str, Any]:
        record = {
            "sample_id": sample["sample_id"],
            "question": sample.get("question"),
            "answers": sample.get("answers"),
        }
        if sample.get("choices"):
            record["choices"] = sample["choices"]
        if sample.get("meta"):
            record["meta"] = sample["meta"]
        if pred is not None:
            record.update(pred.to_record())
        else:
            record.update(prediction=None, layer=None, vaq=None, box=None, path=None, timings={})
        record["error"] = error
        return record


ERROR_MESSAGE_CHARS = 500  # a record's `error` keeps this much of the exception message


def _describe_error() -> str:
    """`Type: message (file:line)` of the exception being handled, on one line."""
    import sys

    exc = sys.exc_info()[1]
    frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
    where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    message = " ".join(str(exc).split())[:ERROR_MESSAGE_CHARS]
    return f"{type(exc).__name__}: {message}{where}"
