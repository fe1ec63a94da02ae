"""VQA data: annotation readers, the image-loading dataset and the Lightning data module.

`VQADataModule` is imported on first use, so reading annotations does not pay for importing Lightning.
"""

from typing import Any

from .dataset import VQADataset, collate_samples, load_image
from .formats import READERS, default_image_root, read_annotations, read_jsonl
from .parsing import Annotations
from .samples import CHOICE_LETTERS, MC_INSTRUCTION, VQASample, choice_letter, format_question

__all__ = [
    "CHOICE_LETTERS",
    "MC_INSTRUCTION",
    "READERS",
    "Annotations",
    "VQADataModule",
    "VQADataset",
    "VQASample",
    "choice_letter",
    "collate_samples",
    "default_image_root",
    "format_question",
    "load_image",
    "read_annotations",
    "read_jsonl",
]


def __getattr__(name: str) -> Any:
    if name == "VQADataModule":
        from .datamodule import VQADataModule

        return VQADataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
