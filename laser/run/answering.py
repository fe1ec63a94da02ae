"""Answering a batch so that one bad sample fails alone, and the JSON record of each answer.

Shared by every runner of the engine (the Lightning module, the lmms-eval model): a batch is answered
at once; if that raises, one by one, so only the sample that fails becomes an error; an answer whose
logits went NaN/inf is answered again with vanilla decoding (docs/method.md, "Lightning"). Errors are
classified: a bad input is final; running out of memory or a device fault is `retryable` (the device
cache is emptied first, and a rerun answers the sample again).
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image

from ..data.samples import choice_letter
from ..method.decoding import NONFINITE_LOGITS
from ..method.engine import LaserEngine
from ..method.prediction import Prediction
from ..method.scoring import OptionScores


class Answer(NamedTuple):
    """One sample's outcome: a prediction, or None and a one-line `error`; `retryable` when the error
    was a lack of memory or a device fault, not the sample's input."""

    prediction: Prediction | None
    error: str | None
    retryable: bool = False


def answer_samples(
    engine: LaserEngine,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    seeds: Sequence[int],
    features: Sequence[Any] | None = None,
) -> list[Answer]:
    """`engine.answer_batch` on the whole batch; if that fails (a bad input, or out of memory), sample by
    sample so only the bad sample fails (its `error` says why, `retryable` whether a rerun may succeed);
    each prediction then goes through `checked`. `features`: the images already preprocessed (DataLoader
    workers; `LaserEngine.image_preprocessor`), None where not."""
    images, questions, seeds = list(images), list(questions), list(seeds)
    features = _features(features)

    def batch() -> list[Answer]:
        predictions = engine.answer_batch(images, questions, seeds, features)
        return [checked(engine, im, q, s, p) for im, q, s, p in zip(images, questions, seeds, predictions)]

    def alone(i: int) -> Answer:
        one = [features[i]] if features is not None else None
        return checked(engine, images[i], questions[i], seeds[i], engine.answer_batch([images[i]], [questions[i]], [seeds[i]], one)[0])

    return batch_then_alone(batch, alone, len(images))


def score_samples(
    engine: LaserEngine,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    seeds: Sequence[int],
    features: Sequence[Any] | None = None,
) -> list[Answer]:
    """`engine.score_options` on the whole batch; if that fails, sample by sample so only the bad sample
    fails (its `error` says why). The options' ranking is the answer: no vanilla retry on NaN/inf
    logits (the sample's `fallback` says so and its scores hold NaN)."""
    images, questions, options, seeds = list(images), list(questions), list(options), list(seeds)
    features = _features(features)

    def batch() -> list[Answer]:
        return [Answer(p, None) for p in engine.score_options(images, questions, options, seeds, features)]

    def alone(i: int) -> Answer:
        one = [features[i]] if features is not None else None
        return Answer(engine.score_options([images[i]], [questions[i]], [options[i]], [seeds[i]], one)[0], None)

    return batch_then_alone(batch, alone, len(images))


def _features(features: Sequence[Any] | None) -> list[Any] | None:
    return list(features) if features is not None and any(f is not None for f in features) else None


def batch_then_alone(batch: Callable[[], list[Answer]], alone: Callable[[int], Answer], n: int) -> list[Answer]:
    """`batch()`; if it raises, `alone(i)` for each of the `n` samples, each failure its own error
    `Answer`. After an out-of-memory or device error the device cache is emptied before going on."""
    try:
        return batch()
    except Exception as err:
        failure = Answer(None, describe_error(), is_retryable(err))
    if failure.retryable:
        free_device_memory()  # out of the except block: the traceback no longer holds the batch's tensors
    if n == 1:
        return [failure]
    return [_guarded(alone, i) for i in range(n)]


def _guarded(alone: Callable[[int], Answer], i: int) -> Answer:
    try:
        return alone(i)
    except Exception as err:
        failure = Answer(None, describe_error(), is_retryable(err))
    if failure.retryable:
        free_device_memory()
    return failure


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


def checked(engine: LaserEngine, image: Image.Image, question: str, seed: int, pred: Prediction) -> Answer:
    """`pred`, unless its own logits went NaN/inf (say, float16 overflow): then the sample is answered
    again with vanilla decoding (the `fallback` field says why), and if that fails too (or the method is
    vanilla already) it becomes an error."""
    if not (pred.fallback or "").startswith(NONFINITE_LOGITS):
        return Answer(pred, None)
    reason = f"{pred.fallback} on the {pred.path} path"
    running = engine.config
    if not running.localize and running.decode.mode == "direct":  # vanilla already: nothing to fall back to
        return Answer(None, f"NonFiniteLogits: {reason}; no answer")
    vanilla = running.replace(localize=False, **{"crop.enabled": False, "decode.mode": "direct"})
    retry = engine.with_config(vanilla).answer_batch([image], [question], [seed])[0]
    if (retry.fallback or "").startswith(NONFINITE_LOGITS):
        return Answer(None, f"NonFiniteLogits: {reason}, and {retry.fallback} with vanilla decoding")
    retry.path, retry.method = "vanilla", pred.method
    retry.fallback = f"{reason}; answered with vanilla decoding"
    return Answer(retry, None)


def make_record(
    sample: dict[str, Any], pred: Prediction | None, error: str | None, retryable: bool = False
) -> dict[str, Any]:
    """The JSON line of one sample: its `sample_id`, `question`, `answers` (and `choices`, `meta` when
    present), the prediction's fields (`prediction`, `layer`, `vaq`, `box`, `path`, `timings`, ...;
    nulls without one), `error` and, with an error, `retryable` (true: a rerun answers it again). Ranked
    options (`OptionScores`) add `choice` and `option_scores`, and `prediction` is the chosen option's
    letter."""
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
        if isinstance(pred, OptionScores):  # the ranked option's letter, read by the `choice` metric
            record["prediction"] = choice_letter(pred.choice)
    else:
        record.update(prediction=None, layer=None, vaq=None, box=None, path=None, timings={})
    record["error"] = error
    if error is not None:
        record["retryable"] = retryable
    return record


ERROR_MESSAGE_CHARS = 500
"""A record's `error` keeps this much of the exception message."""


def describe_error() -> str:
    """`Type: message (file:line)` of the exception being handled, on one line."""
    exc = sys.exc_info()[1]
    frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
    where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    message = " ".join(str(exc).split())[:ERROR_MESSAGE_CHARS]
    return f"{type(exc).__name__}: {message}{where}"
