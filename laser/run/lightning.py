"""`LaserModule`: the engine inside Lightning's predict loop (docs/method.md, "Lightning").

The model is loaded in `configure_model`, once per process, straight onto that process's device (or
over several devices with a `device_map`). It is deliberately not a submodule of the LightningModule:
Lightning never moves it (a sharded model stays sharded), converts it, or copies it to host memory
at teardown. `predict_step` returns one JSON record per sample; a failed sample becomes a record with
`error` while the run goes on. Failures for want of memory or on a device fault are marked
`"retryable": true` (a rerun answers them again) after the device cache is emptied; a batch that runs
out of memory is answered again sample by sample first. No collectives inside `predict_step`.
"""

from __future__ import annotations

import copy
import gc
import traceback
from typing import Any

import lightning.pytorch as pl
import torch

from ..method.config import LaserConfig
from ..method.decoding import NONFINITE_LOGITS
from ..method.engine import LaserEngine
from ..method.prediction import Prediction
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
        load: dict[str, Any] | None = None,
    ):
        """`load`: more `from_pretrained` arguments (`device_map`, `attn_implementation`, `max_memory`,
        `processor_kwargs`), from the `model.*` keys of `laser predict`."""
        super().__init__()
        self.model_ref = str(model)
        self.adapter_name = adapter
        self.dtype_name = dtype
        self.seed = seed
        self.load = dict(load or {})
        if isinstance(method, str):
            method = LaserConfig.preset(method)
        elif isinstance(method, dict):
            method = LaserConfig.from_dict(method)
        self.method = method
        # A plain attribute, not a submodule: Lightning must not move, convert or offload the model.
        self.engine = engine
        self.idle = False  # set when no rank has a sample left: the model is then not loaded

    def configure_model(self) -> None:
        if self.engine is not None or self.idle:
            return
        from ..adapters import create_adapter

        device = self._root_device()
        kwargs = load_kwargs(self.load, device)
        adapter = create_adapter(
            self.model_ref, adapter=self.adapter_name, dtype=resolve_dtype(self.dtype_name, device), **kwargs
        )
        adapter.model.eval().requires_grad_(False)
        if "device_map" not in kwargs and adapter.device != device:
            adapter.model.to(device)
        self.engine = LaserEngine(adapter, self.method)

    def _root_device(self) -> torch.device:
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> list[dict[str, Any]]:
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
        """Answer as one batch; if that fails (a bad input, or out of memory), answer one by one so
        only the bad sample fails."""
        failure = None
        try:
            predictions = self._engine_batch(samples)
            return [self._checked(s, p) for s, p in zip(samples, predictions)]
        except Exception as err:
            failure = (_describe_error(), is_retryable(err))
        if failure[1]:
            free_device_memory()  # after the except block: the traceback no longer holds the tensors
        if len(samples) == 1:
            return [self._failed(samples[0], *failure)]
        return [self._answer_alone(sample) for sample in samples]

    def _answer_alone(self, sample: dict[str, Any]) -> dict[str, Any]:
        failure = None
        try:
            return self._checked(sample, self._engine_batch([sample])[0])
        except Exception as err:
            failure = (_describe_error(), is_retryable(err))
        if failure[1]:
            free_device_memory()
        return self._failed(sample, *failure)

    def _failed(self, sample: dict[str, Any], error: str, retryable: bool) -> dict[str, Any]:
        record = self._record(sample, None, error)
        record["retryable"] = retryable
        return record

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
        if error is not None:
            record["retryable"] = False
        return record


RESOURCE_ERRORS = (
    "out of memory",
    "can't allocate memory",
    "CUDA error",
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
    "cudaError",
    "device-side assert",
    "NCCL error",
    "HIP error",
    "XPU error",
    "MPS backend",
)
"""Messages of errors that say the device failed or ran out of memory, not that the input is bad."""


def is_retryable(err: BaseException) -> bool:
    """True for a resource or device error (out of memory, a CUDA fault): the same sample may well
    succeed on a rerun, so its record is written with `"retryable": true` and is not counted as done.
    Anything else (a bad image, an empty or too long question) is the input's fault and final."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    if accelerator_error is not None and isinstance(err, accelerator_error):
        return True
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in RESOURCE_ERRORS)


def free_device_memory() -> None:
    """Drop unreachable tensors and return the accelerator's cached blocks after a resource error."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def load_kwargs(load: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`from_pretrained` arguments for this process: the user's `load` keys, and without a
    `device_map` one that puts every weight straight onto `device` when that is an accelerator
    (no copy through host memory)."""
    kwargs = {k: v for k, v in load.items() if v is not None and v != {}}
    if "device_map" not in kwargs and device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    return kwargs


def _describe_error() -> str:
    """`Type: message (file:line)` of the exception being handled, on one line."""
    import sys

    exc = sys.exc_info()[1]
    frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
    where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    message = " ".join(str(exc).split())[:500]
    return f"{type(exc).__name__}: {message}{where}"
