"""The language-model losses of the testbed trainers (tools/train_emergent.py, tools/train_testbed_qwen.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_loss(logits: torch.Tensor, batch: tuple, image_token_id: int, prompt_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the answer tokens, plus `prompt_weight` x the next-token loss on the prompt's text
    (not image, padding or answer tokens; the question included).

    logits: [B, T - 1, V] (the model's logits without the last position); batch: (input_ids [B, T],
    attention_mask [B, T], labels [B, T], -100 off the answer)."""
    ids, mask, labels = batch
    vocab = logits.size(-1)
    loss = F.cross_entropy(logits.reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
    if prompt_weight > 0:
        text = ids.masked_fill((labels != -100) | (mask == 0) | (ids == image_token_id), -100)
        loss = loss + prompt_weight * F.cross_entropy(logits.reshape(-1, vocab), text[:, 1:].reshape(-1), ignore_index=-100)
    return loss


def first_token_hits(logits: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """Per sample: whether the first answer token is the argmax (logits [B, T - 1, V], labels [B, T])."""
    with torch.no_grad():
        pos = labels[:, 1:] != -100
        first = pos & (pos.cumsum(1) == 1)
        return (logits.argmax(-1)[first] == labels[:, 1:][first]).tolist()
