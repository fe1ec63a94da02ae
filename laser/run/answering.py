"""Answering a batch so that one bad sample fails alone, and the JSON record of each answer.

Shared by every runner of the engine (the Lightning module, the lmms-eval model): a batch is answered
at once; if that raises, one by one, so only the sample that fails becomes an error; an answer whose
logits went NaN/inf is answered again with vanilla decoding (docs/method.md, "Lightning").
"""

from __future__ import annotations

import copy
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

from PIL import Image

from ..method.decoding import NONFINITE_LOGITS
from ..method.engine import LaserEngine
from ..method.prediction import Prediction
from ..method.scoring import OptionScores
from .data.samples import choice_letter


class Answer(NamedTuple):
    """One sample's outcome: a prediction, or None and a one-line `error`."""

    prediction: Prediction | None
    error: str | None


def answer_samples(
    engine: LaserEngine,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    seeds: Sequence[int],
    features: Sequence[Any] | None = None,
) -> list[Answer]:
    """`engine.answer_batch` on the whole batch; if that fails, sample by sample so only the bad sample
    fails (its `error` says why); each prediction then goes through `checked`. `features`: the images
    already preprocessed (DataLoader workers; `LaserEngine.image_preprocessor`), None where not."""
    images, questions, seeds = list(images), list(questions), list(seeds)
    features = list(features) if features is not None and any(f is not None for f in features) else None
    try:
        predictions = engine.answer_batch(images, questions, seeds, features)
        return [checked(engine, im, q, s, p) for im, q, s, p in zip(images, questions, seeds, predictions)]
    except Exception:
        if len(images) == 1:
            return [Answer(None, describe_error())]
    out = []
    for i, (image, question, seed) in enumerate(zip(images, questions, seeds)):
        one = [features[i]] if features is not None else None
        try:
            out.append(checked(engine, image, question, seed, engine.answer_batch([image], [question], [seed], one)[0]))
        except Exception:
            out.append(Answer(None, describe_error()))
    return out


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
    features = list(features) if features is not None and any(f is not None for f in features) else None
    try:
        return [Answer(p, None) for p in engine.score_options(images, questions, options, seeds, features)]
    except Exception:
        if len(images) == 1:
            return [Answer(None, describe_error())]
    out = []
    for i in range(len(images)):
        one = [features[i]] if features is not None else None
        try:
            out.append(Answer(engine.score_options([images[i]], [questions[i]], [options[i]], [seeds[i]], one)[0], None))
        except Exception:
            out.append(Answer(None, describe_error()))
    return out


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
    vanilla = copy.deepcopy(running)
    vanilla.localize, vanilla.crop.enabled, vanilla.decode.mode = False, False, "direct"
    engine.config = vanilla
    try:
        retry = engine.answer_batch([image], [question], [seed])[0]
    finally:
        engine.config = running
    if (retry.fallback or "").startswith(NONFINITE_LOGITS):
        return Answer(None, f"NonFiniteLogits: {reason}, and {retry.fallback} with vanilla decoding")
    retry.path, retry.method = "vanilla", pred.method
    retry.fallback = f"{reason}; answered with vanilla decoding"
    return Answer(retry, None)


def make_record(sample: dict[str, Any], pred: Prediction | None, error: str | None) -> dict[str, Any]:
    """The JSON line of one sample: its `sample_id`, `question`, `answers` (and `choices`, `meta` when
    present), the prediction's fields (`prediction`, `layer`, `vaq`, `box`, `path`, `timings`, ...;
    nulls without one) and `error`. Ranked options (`OptionScores`) add `choice` and `option_scores`,
    and `prediction` is the chosen option's letter."""
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
