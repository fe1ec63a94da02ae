"""Token-by-token decoding with a KV cache: direct, or VAT contrastive in lock-step (docs/method.md).

The contrastive path runs the positive and the negative stream as one batch of 2B per step:
`VAT_t = z+_t - z-_t`, score `s_t = z+_t + alpha * VAT_t = (1 + alpha) z+_t - alpha z-_t`, and
tokens with `p+ < beta * max p+` are excluded (adaptive plausibility). The scores then go through the
logits processors `model.generate` would apply (built by transformers from the model's generation
config, with the method's explicit `decode.*` settings on top): repetition penalty, and when sampling
the temperature / top-k / top-p warpers. The direct path is therefore `model.generate` itself.

The host reads the device once per generated token (the new tokens and their flags, in one transfer);
everything else stays on the device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList

from ..compat import is_generation_model, logits_processors_of, output_cache
from .config import DecodeConfig

# `decode.*` keys that override the model's generation config when set (None keeps the model's value)
GENERATION_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")


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


def generating_model(model: Any) -> Any:
    """`model` if it is a transformers generation model, else its first submodule that is (the language
    model of a composite model): whose generation config and logits processors decoding uses."""
    modules = model.modules() if hasattr(model, "modules") else [model]
    for module in modules:
        if is_generation_model(module):
            return module
    raise TypeError(f"{type(model).__name__} holds no transformers generation model (GenerationMixin)")


def generation_config(model: Any, cfg: DecodeConfig) -> GenerationConfig:
    """The model's generation config (what `model.generate` uses) with the `decode.*` values that are set."""
    base = getattr(generating_model(model), "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    for key in GENERATION_KEYS:
        value = getattr(cfg, key, None)
        if value is not None:
            setattr(config, key, value)
    return config


def logits_processors(
    model: Any, config: GenerationConfig, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, eos: torch.Tensor
) -> LogitsProcessorList:
    """The processors and warpers `model.generate` applies under `config`, built by transformers
    (the builder `generate` calls; `laser.compat.logits_processors_of`).

    prompt_ids / prompt_mask: [batch, T] left-padded prompt (the repetition penalty skips the padding).
    """
    return logits_processors_of(generating_model(model), config, prompt_ids, prompt_mask, eos)


def select_tokens(
    scores: torch.Tensor, do_sample: bool, generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """Greedy argmax, or one draw from softmax(scores) per row with that row's generator: [batch].

    `scores` are already processed (temperature, top-k, top-p); the draw stays on the scores' device.
    Without generators, the global generator draws (as `model.generate` does).
    """
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float(), dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    draws = [torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(draws).squeeze(1)


NONFINITE_LOGITS = "non-finite logits"
"""How a sample's `fallback` reason starts when its own (positive or direct) logits were NaN or +inf."""


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """[batch] bool: rows holding a NaN or +inf, or no finite value at all (-inf alone is a mask)."""
    return torch.isnan(logits).any(dim=-1) | torch.isposinf(logits).any(dim=-1) | ~torch.isfinite(logits).any(dim=-1)


def device_generators(seeds: list[int] | None, device: torch.device) -> list[torch.Generator] | None:
    """One generator per sample on `device`, seeded with the sample's seed."""
    if seeds is None:
        return None
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def generate(
    adapter: Any,
    model_inputs: dict[str, Any],
    cfg: DecodeConfig,
    *,
    contrastive: bool,
    seeds: list[int] | None = None,
) -> tuple[list[list[int]], list[str | None]]:
    """Decode answers for `model_inputs` (left-padded; for `contrastive`, rows [0, B) are the positive
    and rows [B, 2B) the negative streams of the same samples).

    `seeds` (one per sample) seed the sampling generators, made on the logits' device; without them
    sampling draws from the global generator, like `model.generate`.

    Returns the answer token ids per sample (EOS excluded) and, per sample, the reason decoding fell
    back to the positive stream alone (non-finite contrastive scores), or None. A sample whose own
    logits turn NaN/inf stops there with a reason starting with `NONFINITE_LOGITS`.
    """
    model = adapter.model
    attention_mask = model_inputs["attention_mask"]
    rows = attention_mask.shape[0]
    batch = rows // 2 if contrastive else rows
    device = attention_mask.device
    eos_ids = adapter.eos_token_ids()
    eos = torch.tensor(eos_ids, device=device)
    config = generation_config(model, cfg)
    sequences = model_inputs["input_ids"][:batch]
    processors = logits_processors(model, config, sequences, attention_mask[:batch], eos)
    # Without padding the steps need no mask (as in `generate`): the model then has nothing to check.
    padded = not bool(attention_mask.all())
    output = adapter.forward(model_inputs, use_cache=True, logits_to_keep=1)
    cache = output_cache(output)
    generators = None
    answers: list[list[int]] = [[] for _ in range(batch)]
    fallbacks: list[str | None] = [None] * batch
    finished = [False] * batch
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        z = output.logits[:, -1, :].float()
        if generators is None and config.do_sample:
            generators = device_generators(seeds, z.device)
        z_pos = z[:batch]
        nonfinite = nonfinite_rows(z_pos)  # e.g. float16 overflow: argmax over NaN silently gives token 0
        z_pos = torch.where(nonfinite[:, None], torch.zeros_like(z_pos), z_pos)
        if contrastive:
            scores = plausibility_cut(vat_scores(z_pos, z[batch:], cfg.alpha), z_pos, cfg.beta)
            bad = nonfinite_rows(scores)
            scores = torch.where(bad[:, None], z_pos, scores)
        else:
            scores, bad = z_pos, torch.zeros_like(nonfinite)
        tokens = select_tokens(processors(sequences, scores), config.do_sample, generators)
        stop = torch.isin(tokens, eos) | nonfinite
        # the step's one host read: tokens and flags together
        host_tokens, host_stop, host_nonfinite, host_bad = torch.stack(
            [tokens, stop.long(), nonfinite.long(), bad.long()]
        ).tolist()
        for i in range(batch):
            if finished[i]:
                continue
            if host_nonfinite[i]:
                fallbacks[i] = f"{NONFINITE_LOGITS} (NaN/inf) at step {step}; answer cut there"
            elif host_bad[i]:
                fallbacks[i] = fallbacks[i] or f"non-finite contrastive scores at step {step}"
            if host_stop[i]:
                finished[i] = True
            else:
                answers[i].append(host_tokens[i])
        done = done | stop
        if all(finished) or step == cfg.max_new_tokens - 1:
            break
        step_tokens = tokens.masked_fill(done, eos_ids[0])
        sequences = torch.cat([sequences, step_tokens[:, None]], dim=1)
        if contrastive:
            step_tokens = torch.cat([step_tokens, step_tokens])
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)
        step_inputs = {"input_ids": step_tokens[:, None]}
        if padded:
            step_inputs["attention_mask"] = attention_mask
        output = adapter.forward(step_inputs, cache, attention_mask, use_cache=True, logits_to_keep=1)
        cache = output_cache(output)
    return answers, fallbacks
