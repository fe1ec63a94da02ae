"""Token-by-token decoding with a KV cache: direct, or VAT contrastive in lock-step (docs/method.md).

The contrastive path runs the positive and the negative stream as one batch of 2B per step:
`VAT_t = z+_t - z-_t`, score `s_t = z+_t + alpha * VAT_t = (1 + alpha) z+_t - alpha z-_t`, and
tokens with `p+ < beta * max p+` are excluded (adaptive plausibility).
"""

from __future__ import annotations

from typing import Any

import torch

from .cache import cache_kwarg, output_cache
from .config import DecodeConfig


def vat_scores(z_pos: torch.Tensor, z_neg: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = z+ + alpha (z+ - z-): [batch, vocab]."""
    return z_pos + alpha * (z_pos - z_neg)


def plausibility_cut(scores: torch.Tensor, z_pos: torch.Tensor, beta: float) -> torch.Tensor:
    """Set scores of tokens with p+ < beta * max p+ to -inf (beta = 0 keeps every token)."""
    if beta <= 0:
        return scores
    p_pos = torch.softmax(z_pos.float(), dim=-1)
    keep = p_pos >= beta * p_pos.max(dim=-1, keepdim=True).values
    return scores.masked_fill(~keep, float("-inf"))


def choose_tokens(
    scores: torch.Tensor, cfg: DecodeConfig, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """Greedy argmax, or sampling (temperature, top-k, top-p) with one generator per row: [batch]."""
    if not cfg.do_sample:
        return scores.argmax(dim=-1)
    logits = scores.float() / max(cfg.temperature, 1e-6)
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > cfg.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()
    tokens = [
        torch.multinomial(probs[i], 1, generator=generators[i] if generators else None)
        for i in range(probs.shape[0])
    ]
    return torch.cat(tokens).to(scores.device)


NONFINITE_LOGITS = "non-finite logits"
"""How a sample's `fallback` reason starts when its own (positive or direct) logits were NaN or +inf."""


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """[batch] bool: rows holding a NaN or +inf, or no finite value at all (-inf alone is a mask)."""
    return torch.isnan(logits).any(dim=-1) | torch.isposinf(logits).any(dim=-1) | ~torch.isfinite(logits).any(dim=-1)


def generate(
    adapter: Any,
    model_inputs: dict[str, Any],
    cfg: DecodeConfig,
    *,
    contrastive: bool,
    generators: list[torch.Generator] | None = None,
) -> tuple[list[list[int]], list[str | None]]:
    """Decode answers for `model_inputs` (left-padded; for `contrastive`, rows [0, B) are the positive
    and rows [B, 2B) the negative streams of the same samples).

    Returns the answer token ids per sample (EOS excluded) and, per sample, the reason decoding fell
    back to the positive stream alone (non-finite contrastive scores), or None. A sample whose own
    logits turn NaN/inf stops there with a reason starting with `NONFINITE_LOGITS`.
    """
    model = adapter.model
    eos = torch.tensor(adapter.eos_token_ids(), device=adapter.device)
    attention_mask = model_inputs["attention_mask"]
    rows = attention_mask.shape[0]
    batch = rows // 2 if contrastive else rows
    kw = cache_kwarg(model)
    forward_inputs = dict(model_inputs)
    position_ids = adapter.position_ids(attention_mask)
    if position_ids is not None:
        forward_inputs["position_ids"] = position_ids
    output = model(**forward_inputs, use_cache=True, logits_to_keep=1)
    cache = output_cache(output)
    answers: list[list[int]] = [[] for _ in range(batch)]
    fallbacks: list[str | None] = [None] * batch
    done = torch.zeros(batch, dtype=torch.bool, device=attention_mask.device)
    for step in range(cfg.max_new_tokens):
        z = output.logits[:, -1, :].float()
        z_pos = z[:batch]
        nonfinite = nonfinite_rows(z_pos)  # e.g. float16 overflow: argmax over NaN silently gives token 0
        broken = nonfinite & ~done
        if nonfinite.any():
            z_pos = torch.where(nonfinite[:, None], torch.zeros_like(z_pos), z_pos)
            for i in broken.nonzero().flatten().tolist():
                fallbacks[i] = f"{NONFINITE_LOGITS} (NaN/inf) at step {step}; answer cut there"
        if contrastive:
            scores = plausibility_cut(vat_scores(z_pos, z[batch:], cfg.alpha), z_pos, cfg.beta)
            bad = nonfinite_rows(scores)
            if bad.any():
                scores = torch.where(bad[:, None], z_pos, scores)
                for i in (bad & ~nonfinite & ~done).nonzero().flatten().tolist():
                    fallbacks[i] = fallbacks[i] or f"non-finite contrastive scores at step {step}"
        else:
            scores = z_pos
        tokens = choose_tokens(scores, cfg, generators)
        finished_now = torch.isin(tokens, eos) | broken
        for i in (~done & ~finished_now).nonzero().flatten().tolist():
            answers[i].append(int(tokens[i]))
        done = done | finished_now
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        step_tokens = tokens.masked_fill(done, int(eos[0]))
        if contrastive:
            step_tokens = torch.cat([step_tokens, step_tokens])
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)
        step_inputs = {"input_ids": step_tokens[:, None], "attention_mask": attention_mask, kw: cache}
        position_ids = adapter.position_ids(attention_mask, attention_mask.shape[1] - 1)
        if position_ids is not None:
            step_inputs["position_ids"] = position_ids
        output = model(**step_inputs, use_cache=True, logits_to_keep=1)
        cache = output_cache(output)
    return answers, fallbacks
