"""Each distinct image preprocessed once per `answer_batch`, whichever prompts it appears in.

An adapter's processor calls `processor.image_processor(images, **kwargs)` inside `build_inputs`. While
a `processing_once` scope is active, an `ImageFeatureMemo` stands in for that image processor: each
*group* (one element of `images`: an image, or a sample's list of images for processors that take one
list per sample) is processed once per set of keyword arguments and reused by every later call of the
scope; the groups of one call are joined the way the image processor joins a batch (tensors
concatenated along the first dimension, zero-padded along the others; lists concatenated). The text
side (prompt expansion, tokenisation) still runs in every call: it is cheap and depends on the prompt.

Features computed elsewhere — in DataLoader workers, by an `ImageCall` — join the scope with `add`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature


class CannotJoin(ValueError):
    """The outputs of single groups cannot be joined into a batch generically."""


def kwargs_key(kwargs: dict[str, Any]) -> str:
    """A stable key for an image-processor call's keyword arguments."""
    return repr(sorted(kwargs.items()))


def join_features(features: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch from per-group outputs: tensors concatenated along dim 0 (zero-padded to the largest
    size along the other dims), lists concatenated, equal scalars kept; anything else raises `CannotJoin`."""
    keys = list(features[0].keys())
    if any(list(f.keys()) != keys for f in features):
        raise CannotJoin("groups returned different keys")
    out: dict[str, Any] = {}
    for key in keys:
        values = [f[key] for f in features]
        first = values[0]
        if isinstance(first, torch.Tensor):
            if any(not isinstance(v, torch.Tensor) or v.ndim != first.ndim for v in values) or first.ndim == 0:
                raise CannotJoin(f"{key}: tensors of different ranks")
            if len(values) == 1:
                out[key] = first
                continue
            size = [max(v.shape[d] for v in values) for d in range(1, first.ndim)]
            padded = []
            for v in values:
                pad = []
                for d in reversed(range(1, first.ndim)):
                    pad += [0, size[d - 1] - v.shape[d]]
                padded.append(F.pad(v, pad) if any(pad) else v)
            out[key] = torch.cat(padded, dim=0)
        elif isinstance(first, list):
            out[key] = [item for v in values for item in v]
        elif all(v == first for v in values):
            out[key] = first
        else:
            raise CannotJoin(f"{key}: differing values of type {type(first).__name__}")
    return out


@dataclass
class _Entry:
    group: Any  # the image(s), kept alive so that their ids stay theirs
    features: dict[str, Any]


def _group_images(group: Any) -> list[Any] | None:
    """The images of a group, or None if it is not an image / a list of images."""
    images = list(group) if isinstance(group, (list, tuple)) else [group]
    return images if images and all(isinstance(im, Image.Image) for im in images) else None


class ImageFeatureMemo:
    """Stands in for an image processor; see the module docstring.

    `processed` counts the images that reached the real image processor; `calls` the calls it received.
    """

    def __init__(self, image_processor: Any):
        self.__dict__["inner"] = image_processor
        self.__dict__["entries"] = {}
        self.__dict__["processed"] = 0
        self.__dict__["calls"] = 0
        self.__dict__["last_call"] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)

    def _key(self, kw: str, nested: bool, group: Any) -> tuple:
        images = group if nested else [group]
        return (kw, nested, tuple(id(im) for im in images))

    def add(self, image: Image.Image, call: ImageCall, features: dict[str, Any]) -> None:
        """Features of `image` computed by `call` elsewhere (a DataLoader worker)."""
        group = [image] if call.nested else image
        self.entries[self._key(kwargs_key(call.kwargs), call.nested, group)] = _Entry(group, dict(features))

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["calls"] = self.calls + 1
        if args or kwargs.get("return_tensors") != "pt" or not isinstance(images, (list, tuple)) or not images:
            return self._inner(images, *args, **kwargs)
        nested = isinstance(images[0], (list, tuple))
        groups = list(images)
        if any(isinstance(g, (list, tuple)) != nested or _group_images(g) is None for g in groups):
            return self._inner(images, **kwargs)
        kw = kwargs_key(kwargs)
        self.__dict__["last_call"] = ImageCall(dict(kwargs), nested)
        keys = [self._key(kw, nested, g) for g in groups]
        for key, group in zip(keys, groups):
            if key not in self.entries:
                self.entries[key] = _Entry(group, dict(self._inner([group], **kwargs)))
        try:
            joined = join_features([self.entries[key].features for key in keys])
        except CannotJoin:
            return self._inner(images, **kwargs)
        return BatchFeature(data=joined)

    def _inner(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        groups = images if isinstance(images, (list, tuple)) else [images]
        self.__dict__["processed"] = self.processed + sum(
            len(g) if isinstance(g, (list, tuple)) else 1 for g in groups
        )
        return self.inner(images, *args, **kwargs)


@contextmanager
def processing_once(processor: Any) -> Iterator[ImageFeatureMemo | None]:
    """Within the block, `processor`'s image processor is an `ImageFeatureMemo` (None is yielded for a
    processor without one). Re-entering an active scope yields the same memo."""
    inner = getattr(processor, "image_processor", None)
    if isinstance(inner, ImageFeatureMemo):
        yield inner
        return
    if inner is None or not callable(inner):
        yield None
        return
    memo = ImageFeatureMemo(inner)
    object.__setattr__(processor, "image_processor", memo)
    try:
        yield memo
    finally:
        object.__setattr__(processor, "image_processor", inner)


@dataclass
class ImageCall:
    """How a processor calls its image processor for one sample's image: the keyword arguments, and
    whether images go in one list per sample. Picklable, so a DataLoader worker can run it."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    nested: bool = False


@dataclass
class ImageFeatures:
    """One image's preprocessed features and the call that made them."""

    call: ImageCall
    features: dict[str, Any]


@dataclass
class ImagePreprocessor:
    """`preprocessor(image) -> ImageFeatures`: the image processor's work for one image, as the adapter's
    processor would do it; made by `LaserEngine.image_preprocessor()` to run in DataLoader workers."""

    image_processor: Any
    call: ImageCall

    def __call__(self, image: Image.Image) -> ImageFeatures:
        group = [image] if self.call.nested else image
        return ImageFeatures(self.call, dict(self.image_processor([group], **self.call.kwargs)))
