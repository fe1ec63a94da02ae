"""Training batches of the testbed models: views -> left-padded prompt + answer ids, labels on the answer
tokens only, normalised pixels (shared by tools/train_testbed.py and tools/train_emergent.py)."""

from __future__ import annotations

import torch

from testbed.model import answer_ids, prompt_ids


class AnswerBatcher:
    """`batcher(views)` -> (input_ids [B, T], attention_mask [B, T], labels [B, T], pixel_values [B, 3, H, W])."""

    def __init__(self, tok, processor):
        self.tok = tok
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.cache: dict[str, list[int]] = {}

    def ids(self, question: str) -> list[int]:
        if question not in self.cache:
            self.cache[question] = prompt_ids(self.tok, question)
        return self.cache[question]

    def __call__(self, d):
        seqs, labs = [], []
        for q, a in zip(d["questions"], d["answers"]):
            p, t = self.ids(q), answer_ids(self.tok, a)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        n = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (n - len(s)) + s for s in seqs])
        labels = torch.tensor([[-100] * (n - len(s)) + lb for s, lb in zip(seqs, labs)])
        mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
        px = torch.from_numpy(d["pixels"]).permute(0, 3, 1, 2).float() / 255.0
        return ids, mask, labels, (px - self.mean) / self.std
