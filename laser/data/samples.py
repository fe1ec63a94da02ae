"""`VQASample`, the one record every annotation reader produces, and the multiple-choice prompt.

Keeping a single sample type means the dataset, the metrics and the prediction records never
need to know which benchmark a question came from.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

CHOICE_LETTERS = string.ascii_uppercase
"""Letters used to label options: option i is `CHOICE_LETTERS[i]`."""

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""The closing line of a multiple-choice prompt (the LLaVA evaluation wording)."""


@dataclass
class VQASample:
    """One question about one image.

    `image` is a path relative to the dataset's image root (an absolute path also works).
    `answers` holds the reference answers: the 10 annotator answers for VQA-style sets, one
    label for POPE/GQA, or the correct option's letter for multiple-choice samples, whose option
    texts are in `choices`. `meta` carries benchmark-specific extras (JSON-serialisable).
    """

    sample_id: str
    image: str
    question: str
    answers: list[str]
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.choices is not None and not 2 <= len(self.choices) <= len(CHOICE_LETTERS):
            raise ValueError(
                f"sample {self.sample_id!r} has {len(self.choices)} choices; "
                f"expected between 2 and {len(CHOICE_LETTERS)}"
            )


def choice_letter(index: int) -> str:
    """The letter labelling option `index` (0 -> "A")."""
    if not 0 <= index < len(CHOICE_LETTERS):
        raise ValueError(f"choice index {index} out of range; expected 0..{len(CHOICE_LETTERS) - 1}")
    return CHOICE_LETTERS[index]


def format_question(sample: VQASample) -> str:
    """The question text given to the model.

    Open questions are passed unchanged. A multiple-choice sample becomes the question, one line
    per option ("A. red"), and `MC_INSTRUCTION`, so the model answers with a letter that
    `laser.records.metrics.extract_choice` can read back.
    """
    if not sample.choices:
        return sample.question
    lines = [sample.question.rstrip()]
    lines += [f"{choice_letter(i)}. {choice}" for i, choice in enumerate(sample.choices)]
    lines.append(MC_INSTRUCTION)
    return "\n".join(lines)
