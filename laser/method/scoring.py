"""Option scoring: how likely each given answer is as the model's reply (docs/method.md, "Option scoring").

Multiple-choice benchmarks such as V* Bench rank the options instead of generating: each option is
the continuation of the prompt, and its score is the mean log-probability of its tokens. The
continuation is the option's text tokenised alone, without special tokens, appended to the prompt's
ids (the prompt ends with the family's assistant turn opener, so the option is the first thing the
assistant says; no end-of-turn token is scored).

Two forwards per batch of rows: the prompt (with the KV cache, as decoding's first step; its last
logits predict the first option token) and the options' tokens but the last, right-padded, over that
cache. On the contrastive path rows [R, 2R) are the negative streams of rows [0, R); each position
is scored with log_softmax(s), s = z+ + alpha (z+ - z-) (`decoding.vat_scores`), without the
plausibility cut (which could set a given option token to -inf) and without the generation-time
logits processors (repetition penalty, temperature): the model's own distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..compat import output_cache
from .decoding import NONFINITE_LOGITS, nonfinite_rows, vat_scores
from .prediction import Prediction


@dataclass
class OptionScores(Prediction):
    """A `Prediction` whose answer is the option ranked first: `answer` is its text, `choice` its index;
    `scores[k]` is option k's mean token log-likelihood (NaN if its logits were not finite) and
    `num_tokens[k]` its length in tokens."""

    choice: int = -1
    scores: list[float] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        record.update(choice=self.choice, option_scores=[round(s, 6) for s in self.scores])
        return record


def option_token_ids(tokenizer: Any, options: list[str], sample: int) -> list[list[int]]:
    """Each option's text (stripped) tokenised alone, without special tokens; an option that is empty
    or has no tokens is an error naming it."""
    out = []
    for k, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise ValueError(f"options[{sample}][{k}] is empty; expected the option's text")
        ids = list(tokenizer(option.strip(), add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"options[{sample}][{k}] ({option!r}) has no tokens")
        out.append([int(t) for t in ids])
    return out


def continuation_log_probs(
    adapter: Any,
    model_inputs: dict[str, Any],
    continuations: list[list[int]],
    *,
    contrastive: bool,
    alpha: float = 1.0,
) -> tuple[list[list[float]], list[str | None]]:
    """Log-probability of each continuation token given the prompt and the tokens before it.

    model_inputs: left-padded prompts, R rows (2R for `contrastive`: rows [R, 2R) are the negative
    streams of rows [0, R), continued with the same tokens); continuations: R lists of token ids.
    Returns R lists of per-token log-probabilities and, per row, why its scores fell back (positive
    logits alone where the contrastive scores were not finite) or None; a row whose own logits were
    NaN/inf gets NaN and a reason starting with `NONFINITE_LOGITS`.
    """
    mask = model_inputs["attention_mask"]
    rows = len(continuations)
    if mask.shape[0] != rows * (2 if contrastive else 1):
        raise ValueError(f"{mask.shape[0]} prompt rows for {rows} continuations (contrastive={contrastive})")
    device = mask.device
    output = adapter.forward(model_inputs, use_cache=True, logits_to_keep=1)
    logits = [output.logits[:, -1:, :].float()]
    longest = max(len(c) for c in continuations)
    if longest > 1:  # every option token but the last is fed, so that its logits predict the next
        fed = torch.full((rows, longest - 1), int(adapter.eos_token_ids()[0]), dtype=torch.long)
        fed_mask = torch.zeros((rows, longest - 1), dtype=mask.dtype)
        for r, ids in enumerate(continuations):
            fed[r, : len(ids) - 1] = torch.tensor(ids[:-1], dtype=torch.long)
            fed_mask[r, : len(ids) - 1] = 1
        if contrastive:
            fed, fed_mask = torch.cat([fed, fed]), torch.cat([fed_mask, fed_mask])
        full_mask = torch.cat([mask, fed_mask.to(device)], dim=1)
        step = {"input_ids": fed.to(device), "attention_mask": full_mask}
        logits.append(adapter.forward(step, output_cache(output), use_cache=True).logits.float())
    z = torch.cat(logits, dim=1)  # [rows (x2), longest, vocab]: position t predicts token t
    z_pos = z[:rows]
    own_bad = nonfinite_rows(z_pos)  # [rows, longest]
    scores = z_pos
    vat_bad = torch.zeros_like(own_bad)
    if contrastive:
        combined = vat_scores(z_pos, z[rows:], alpha)
        vat_bad = nonfinite_rows(combined) & ~own_bad
        scores = torch.where(vat_bad[..., None], z_pos, combined)
    log_probs = torch.log_softmax(scores, dim=-1)
    targets = torch.zeros((rows, longest), dtype=torch.long)
    for r, ids in enumerate(continuations):
        targets[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    picked = log_probs.gather(-1, targets.to(log_probs.device)[..., None])[..., 0]
    picked = picked.masked_fill(own_bad, float("nan"))
    picked, own_bad, vat_bad = picked.cpu().tolist(), own_bad.cpu().tolist(), vat_bad.cpu().tolist()
    out, reasons = [], []
    for r, ids in enumerate(continuations):
        n = len(ids)
        out.append(picked[r][:n])
        if any(own_bad[r][:n]):
            reasons.append(f"{NONFINITE_LOGITS} (NaN/inf) at option token {own_bad[r][:n].index(True)}")
        elif any(vat_bad[r][:n]):
            reasons.append(f"non-finite contrastive scores at option token {vat_bad[r][:n].index(True)}")
        else:
            reasons.append(None)
    return out, reasons
