"""Training batches of the testbed models: views -> left-padded prompt + answer ids, labels on the answer
tokens only, normalised pixels (shared by tools/train_testbed.py and tools/train_emergent.py)."""

from __future__ import annotations

import torch

from testbed.model import FOLLOW_UP, answer_ids, prompt, prompt_ids


class AnswerBatcher:
    """`batcher(views)` -> (input_ids [B, T], attention_mask [B, T], labels [B, T], pixel_values [B, 3, H, W])."""

    def __init__(self, tok, processor, order: str = "image-first"):
        self.tok = tok
        self.order = order  # prompt order (tools/testbed/model.py TEMPLATES)
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.cache: dict[str, list[int]] = {}

    def ids(self, question: str) -> list[int]:
        if question not in self.cache:
            self.cache[question] = prompt_ids(self.tok, question, order=self.order)
        return self.cache[question]

    def __call__(self, d):
        seqs, labs = [], []
        for q, a in zip(d["questions"], d["answers"]):
            p, t = self.ids(q), answer_ids(self.tok, a)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        return (*self.pad(seqs, labs), self.pixels(d))

    def pixels(self, d) -> torch.Tensor:
        return normalised_pixels(d, self.mean, self.std)

    def pad(self, seqs: list[list[int]], labs: list[list[int]]):
        return left_pad(seqs, labs, self.tok.pad_token_id)


def normalised_pixels(d, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] normalised pixel values of the views' uint8 `d["pixels"]` [B, H, W, 3]."""
    px = torch.from_numpy(d["pixels"]).permute(0, 3, 1, 2).float() / 255.0
    return (px - mean) / std


def conversations(convs, first_ids, follow_ids, answer_ids):
    """(seqs, labels, turns) of `views.sample_turns` conversations: per view, `first_ids(question)` then the
    answer, then `follow_ids(question)` + answer for each later turn; labels on the answers only; `turns`
    [(family, size, turn index)] in the order of the answers."""
    seqs, labs, turns = [], [], []
    for conv in convs:
        seq, lab = [], []
        for t, (family, question, answer, size, _) in enumerate(conv):
            p = first_ids(question) if t == 0 else follow_ids(question)
            a = answer_ids(answer)
            seq += p + a
            lab += [-100] * len(p) + a
            turns.append((family, size, t))
        seqs.append(seq)
        labs.append(lab)
    return seqs, labs, turns


def left_pad(seqs: list[list[int]], labs: list[list[int]], pad: int):
    """Left-padded (input_ids [B, T], attention_mask [B, T], labels [B, T]) of token lists and their labels."""
    n = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (n - len(s)) + s for s in seqs])
    labels = torch.tensor([[-100] * (n - len(s)) + lb for s, lb in zip(seqs, labs)])
    mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask, labels


class TextBatcher(AnswerBatcher):
    """`batcher(views)` -> (input_ids, attention_mask, labels) of text-only prompts: each view's words
    (`views["described"]`, "red 3 , blue 7") where its image tokens would be, the same question and answer."""

    def __call__(self, d):
        seqs, labs = [], []
        for q, a, words in zip(d["questions"], d["answers"], d["described"]):
            p = self.tok(prompt(q, order=self.order).replace("<image>", words))["input_ids"]
            t = answer_ids(self.tok, a)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        return self.pad(seqs, labs)


class TurnBatcher(AnswerBatcher):
    """`batcher(views)` of `views.sample_turns` -> (input_ids, attention_mask, labels, pixel_values, turns):
    one LLaVA-1.5 conversation per view ("USER: <image>\\nQ1 ... ASSISTANT: A1</s>USER: Q2 ... ASSISTANT:
    A2</s>..."), labels on every answer; `turns` [(family, size, turn index)] in the order of the answers."""

    def __call__(self, d):
        follow = lambda q: self.tok(FOLLOW_UP.format(question=q), add_special_tokens=False)["input_ids"]  # noqa: E731
        seqs, labs, turns = conversations(d["turns"], self.ids, follow, lambda a: answer_ids(self.tok, a))
        return (*self.pad(seqs, labs), self.pixels(d), turns)


def answer_starts(labels: torch.Tensor) -> torch.Tensor:
    """[B, T - 1] bool: the positions (of logits[:, :-1]) that predict the first token of an answer."""
    lab = labels[:, 1:] != -100
    return lab & ~torch.cat([torch.zeros_like(lab[:, :1]), lab[:, :-1]], 1)
