"""The batch contract of `LaserModule.predict_step`: what a data module must yield.

A batch is a **list of sample dicts** (not torch's default collation, which would turn it into a dict of
lists and fail on PIL images: give your DataLoader `collate_fn=laser.run.data.collate_samples`, or any
function returning the list). Each sample dict has:

| key | required | type | what happens to it |
|---|---|---|---|
| `sample_id` | yes | `str` (or int, written as given) | the record's id; resume skips ids already written, so keep it stable and unique |
| `question` | yes | `str` | what the model is asked (already formatted, options included for multiple choice) |
| `image` | yes | `PIL.Image.Image` or `None` | `None` (with `error` saying why) becomes an error record and the run goes on |
| `answers` | no | list of `str` | written to the record for `laser evaluate`; `[]` if you have none |
| `choices` | no | list of `str` | written (multiple-choice scoring) |
| `score_options` | no | `bool` | true: no answer is generated; the `choices` are ranked by likelihood as the reply to `question` (`LaserEngine.score_options`), the record gets `option_scores`, `choice` and the letter as `prediction` |
| `meta` | no | `dict` of JSON values | written as is (e.g. `{"family": "reading"}`; `laser evaluate --by meta.family`) |
| `error` | no | `str` or `None` | a sample that could not be loaded: written as an error record, not answered |
| `padding` | no | `bool` | filler item a distributed sampler adds: answered by nobody, written by nobody |
| `image_features` | no | `ImageFeatures` or `None` | the image already preprocessed (`LaserEngine.image_preprocessor()`, run in DataLoader workers by `VQADataset`); not preprocessed again |

Any other key is ignored (not answered on, not written): put what you want kept in `meta`.
"""

from __future__ import annotations

from typing import Any

REQUIRED_KEYS = ("sample_id", "question", "image")
OPTIONAL_KEYS = ("answers", "choices", "meta", "error", "padding", "image_features", "score_options")


class BatchContractError(ValueError):
    """A batch that does not follow the contract above (raised at the first such batch)."""


def check_batch(batch: Any, batch_idx: int = 0) -> list[dict[str, Any]]:
    """`batch` as a list of sample dicts, or a one-line `BatchContractError` naming the key and the sample."""
    if isinstance(batch, dict):
        raise BatchContractError(
            f"batch {batch_idx} is a dict (torch's default collation); LaserModule takes a list of sample dicts: "
            "give the DataLoader collate_fn=laser.run.data.collate_samples"
        )
    if not isinstance(batch, (list, tuple)):
        raise BatchContractError(f"batch {batch_idx} is a {type(batch).__name__}; expected a list of sample dicts")
    for i, sample in enumerate(batch):
        if not isinstance(sample, dict):
            raise BatchContractError(
                f"batch {batch_idx}, sample {i}: a {type(sample).__name__}; expected a dict with keys "
                f"{', '.join(REQUIRED_KEYS)}"
            )
        if sample.get("padding"):
            continue
        name = f"sample_id={sample['sample_id']!r}" if "sample_id" in sample else f"sample {i}"
        for key in REQUIRED_KEYS:
            if key not in sample:
                raise BatchContractError(
                    f"batch {batch_idx}, {name}: missing required key {key!r} "
                    f"(a sample needs {', '.join(REQUIRED_KEYS)}; see laser.run.batch)"
                )
        if sample.get("score_options") and len(sample.get("choices") or []) < 2:
            raise BatchContractError(
                f"batch {batch_idx}, {name}: score_options=true needs 'choices', a list of at least 2 options"
            )
    return list(batch)
