"""`VQADataModule`: annotations -> `VQADataset` -> a sequential predict dataloader for Lightning."""

from __future__ import annotations

import ctypes
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from ..data.dataset import CHOICE_MODES, VQADataset, collate_samples
from ..data.formats import READERS, default_image_root, read_annotations
from ..data.parsing import check_on_error
from ..data.samples import VQASample
from ..method.config import did_you_mean
from ..records.metrics import DEFAULT_METRICS, METRICS  # noqa: F401  (METRICS re-exported)

PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies (Linux)


def die_with_parent(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: on Linux the worker is killed when the process that started it dies,
    so a `laser predict` killed with SIGKILL leaves no worker behind (an orphaned worker can otherwise
    block for ever on a full result pipe that its sibling workers keep open). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class DataSettings:
    """The `data.*` keys of a run, checked: bad values raise a ValueError naming the key."""

    format: str = "jsonl"
    annotations: Path | None = None
    image_root: Path | None = None
    batch_size: int = 1
    num_workers: int = 0
    limit: int | None = None
    on_error: str = "raise"
    metric: str | None = None
    reader_options: dict[str, Any] | None = None
    choice_mode: str = "generate"

    @classmethod
    def from_keys(cls, keys: dict[str, Any]) -> DataSettings:
        valid = [f.name for f in fields(cls)]
        for key in keys:
            if key not in valid:
                raise ValueError(f"unknown data key {key!r}{did_you_mean(key, valid)}; expected one of {', '.join(valid)}")
        return cls(**keys)

    def __post_init__(self) -> None:
        fmt = self.format
        if fmt not in READERS:
            raise ValueError(f"data.format={fmt!r}; expected one of {', '.join(READERS)}")
        if self.annotations is None:
            raise ValueError(f"data.annotations is not set; expected the path of the {fmt} annotations")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size={self.batch_size}; expected >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers}; expected >= 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit={self.limit}; expected a positive number of samples or null for all")
        check_on_error(self.on_error)
        if self.choice_mode not in CHOICE_MODES:
            raise ValueError(f"data.choice_mode={self.choice_mode!r}; expected one of {', '.join(CHOICE_MODES)}")
        metric = self.metric if self.metric is not None else DEFAULT_METRICS[fmt]
        if metric not in METRICS:
            raise ValueError(f"data.metric={metric!r}; expected one of {', '.join(METRICS)}")
        object.__setattr__(self, "metric", metric)
        object.__setattr__(self, "annotations", Path(self.annotations))
        if self.image_root is not None:
            object.__setattr__(self, "image_root", Path(self.image_root))
        object.__setattr__(self, "reader_options", dict(self.reader_options or {}))


class VQADataModule(pl.LightningDataModule):
    """Reads `annotations` (in `format`) on `setup` and serves them for `trainer.predict`.

    `limit` keeps the first N samples (applied before `skip_ids`, so a resumed run covers the
    same N). `skip_ids` leaves out samples already predicted. `samples` holds every sample of
    the run (limited, not skipped: the ids a finished run must contain) and `errors` the
    annotation entries skipped with `on_error="skip"`. `image_root` defaults to the folder of
    the annotation file (the V* folder itself for vstar). `metric` is carried for the scorer;
    `reader_options` go to the format's reader. `choice_mode` says how multiple-choice samples are
    answered (`VQADataset`).
    """

    def __init__(self, skip_ids: set[str] | None = None, **settings: Any) -> None:
        """`settings`: the `data.*` keys of `DataSettings` (`format`, `annotations`, `image_root`,
        `batch_size`, `num_workers`, `limit`, `on_error`, `metric`, `reader_options`, `choice_mode`)."""
        super().__init__()
        data = DataSettings.from_keys(settings)
        for f in fields(DataSettings):
            setattr(self, f.name, getattr(data, f.name))
        self.settings = data
        self.skip_ids: set[str] = set(skip_ids or ())
        self.samples: list[VQASample] | None = None
        self.errors: list[str] = []
        self.dataset: VQADataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the annotations once (every process calls this; later calls are no-ops)."""
        if self.samples is not None:
            return
        annotations = read_annotations(self.format, self.annotations, self.on_error, **self.reader_options)
        self.errors = list(annotations.errors)
        samples = list(annotations)
        self.samples = samples[: self.limit] if self.limit is not None else samples
        if self.image_root is None:
            self.image_root = default_image_root(self.format, self.annotations)

    @property
    def expected_ids(self) -> list[str]:
        """The ids of every sample of the run, in annotation order."""
        self._require_setup()
        return [sample.sample_id for sample in self.samples]

    def predict_dataloader(self) -> DataLoader:
        """Sequential, unshuffled batches of item dicts (`collate_samples`).

        Under DDP (`use_distributed_sampler=True`) Lightning wraps the sequential sampler in its
        unrepeated distributed sampler: rank r gets items r, r+W, r+2W, ... and no padding. That
        sampler asserts every rank gets at least one item, which a resumed run with fewer pending
        samples than ranks would break, so such a dataset is padded with placeholder items
        (`padding=True`) for which `LaserModule` writes no record: each sample is written once.

        With workers, each item also carries its image preprocessed by the model's image processor
        (`image_features`), so that decoding and preprocessing images overlap the model's work.
        """
        self._require_setup()
        self.dataset = VQADataset(
            self.samples, self.image_root, self.skip_ids, self._image_preprocessor(), self.choice_mode
        )
        world_size = int(getattr(self.trainer, "world_size", 1) or 1)
        self.dataset.pad_to(world_size)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            worker_init_fn=die_with_parent,
        )

    def _image_preprocessor(self) -> Any:
        """The model side's per-image preprocessing (`LaserModule.image_preprocessor`), run in the
        DataLoader workers so that it overlaps the model; None without workers or without a model that
        offers one (the model side then preprocesses each image itself)."""
        if self.num_workers == 0:
            return None
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        make = getattr(module, "image_preprocessor", None)
        return make() if callable(make) else None

    def _require_setup(self) -> None:
        if self.samples is None:
            raise RuntimeError("VQADataModule.setup() has not run yet; call setup('predict') first")
