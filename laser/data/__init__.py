"""VQA data: annotation readers (`formats`, `benchmarks`, `parsing`), samples and the image-loading
dataset. The Lightning data module that serves them to `laser predict` is `laser.run.datamodule`.
"""

from .dataset import VQADataset, collate_samples, load_image
from .formats import READERS, default_image_root, read_annotations, read_jsonl
from .parsing import Annotations
from .samples import CHOICE_LETTERS, MC_INSTRUCTION, VQASample, choice_letter, format_question

__all__ = [
    "CHOICE_LETTERS",
    "MC_INSTRUCTION",
    "READERS",
    "Annotations",
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

