"""`VQADataset`: samples plus their images, loaded so that a bad image never stops a run.

A benchmark of thousands of images always holds a few missing or broken files; the dataset
returns `image=None` with an `error` message for those, so the model side can write an error
record and move on (and the record still counts as done on resume).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..method.images import convert_to_rgb
from .samples import VQASample, format_question

CHOICE_MODES = ("generate", "likelihood")
"""How a multiple-choice sample is answered: `generate`: the options are in the prompt and the model
generates a letter; `likelihood`: the prompt is the bare question and the model ranks the options by
likelihood (`score_options` on the item; V* Bench's official evaluation)."""


def load_image(path: str | Path) -> tuple[Image.Image | None, str | None]:
    """`(RGB image, None)`, or `(None, message)` naming the path and why it could not be loaded.

    Never raises: missing files, folders, empty files and truncated or corrupt data all become
    messages. The EXIF orientation is applied, so a phone photo is seen upright.
    """
    path = Path(path)
    if not path.exists():
        return None, f"image not found: {path}"
    if path.is_dir():
        return None, f"image path is a directory, expected an image file: {path}"
    try:
        if path.stat().st_size == 0:
            return None, f"image file is empty (0 bytes): {path}"
        with Image.open(path) as opened:
            opened.load()  # decode now, inside the try: PIL otherwise decodes lazily
            upright = ImageOps.exif_transpose(opened)
            return convert_to_rgb(upright).copy(), None
    except Exception as err:  # any decoder failure must become a message, not a crash
        return None, f"cannot load image {path}: {type(err).__name__}: {err}"


class VQADataset(Dataset):
    """Map-style dataset over `samples`, minus `skip_ids` (samples already predicted, for resume).

    Item `i` is a dict: `sample_id`, `question` (formatted with the options for multiple
    choice; the bare question with `choice_mode="likelihood"`, which also sets `score_options`), `answers`, `choices`, `meta`, `image` (PIL RGB or None), `error` (None or why the
    image is missing); with `preprocess`, also `image_features` (`preprocess(image)`: the model's image
    preprocessing, run here so that DataLoader workers do it; None if it could not run). Image paths are `image_root / sample.image`; an
    absolute `sample.image` ignores the root.
    """

    def __init__(
        self,
        samples: Sequence[VQASample],
        image_root: str | Path | None = None,
        skip_ids: Iterable[str] | None = None,
        preprocess: Callable[[Image.Image], Any] | None = None,
        choice_mode: str = "generate",
    ) -> None:
        if choice_mode not in CHOICE_MODES:
            raise ValueError(f"choice_mode={choice_mode!r}; expected one of {', '.join(CHOICE_MODES)}")
        self.preprocess = preprocess
        self.choice_mode = choice_mode
        skip = set(skip_ids or ())
        self.samples: list[VQASample] = [s for s in samples if s.sample_id not in skip]
        self.image_root = Path(image_root) if image_root is not None else None
        self.skipped = len(samples) - len(self.samples)
        self.padding = 0  # items past the real samples, for DDP ranks left without one (see `pad_to`)

    def pad_to(self, size: int) -> None:
        """Grow to `size` items with placeholders (`padding=True`, no image loaded) that the model
        side answers with no record, so every rank gets an item yet no sample is written twice."""
        if self.samples and len(self) < size:
            self.padding += size - len(self)

    def __len__(self) -> int:
        return len(self.samples) + self.padding

    def image_path(self, sample: VQASample) -> Path:
        path = Path(sample.image)
        return self.image_root / path if self.image_root is not None else path

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= len(self.samples) and index < len(self):
            return {"sample_id": self.samples[-1].sample_id, "padding": True, "image": None, "error": None}
        sample = self.samples[index]
        if not sample.question.strip():  # a per-sample error, not a model call on an empty prompt
            image, error = None, "question is empty"
        else:
            image, error = load_image(self.image_path(sample))
        ranked = self.choice_mode == "likelihood" and bool(sample.choices)
        item = {
            "sample_id": sample.sample_id,
            "question": sample.question if ranked else format_question(sample),
            "answers": list(sample.answers),
            "choices": list(sample.choices) if sample.choices is not None else None,
            "meta": dict(sample.meta),
            "image": image,
            "error": error,
        }
        if ranked:
            item["score_options"] = True
        if self.preprocess is not None:
            item["image_features"] = self._features(image)
        return item

    def _features(self, image: Image.Image | None) -> Any:
        """`preprocess(image)`, or None (no image, or it failed: the model side then preprocesses the
        image itself and reports any error there)."""
        if image is None:
            return None
        try:
            return self.preprocess(image)
        except Exception:
            return None


def collate_samples(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of item dicts: images differ in size and are preprocessed per model."""
    return list(batch)
