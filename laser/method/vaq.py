"""VAQ: how strongly each layer's visual attention is modulated by the question (docs/method.md).

Shapes: `a_plus`, `a_zero`: [batch, layers, heads, n_visual] last-row attention over visual tokens with
and without the question; `valid`: [batch, n_visual] marks real (not padding) visual entries.
"""

from __future__ import annotations

import torch


def contrastive_map(
    a_plus: torch.Tensor, a_zero: torch.Tensor | None, kind: str = "contrastive", eps: float = 1e-6
) -> torch.Tensor:
    """c[l,h] = relu(a+ - a0) (`contrastive`), a+ / (a0 + eps) (`ratio`, per head, for VAQ scores; ViCrop's map
    is `ratio_map`) or a+ (`raw`)."""
    if kind == "raw":
        return a_plus
    if a_zero is None:
        raise ValueError(f"map kind {kind!r} needs the no-question attention a0")
    if kind == "contrastive":
        return torch.relu(a_plus - a_zero)
    if kind == "ratio":
        return a_plus / (a_zero + eps)
    raise ValueError(f"unknown map kind {kind!r}; expected contrastive, ratio or raw")


def head_scores(c: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """VAQ[l,h] = ||c[l,h]||_2 over valid visual tokens: [batch, layers, heads]."""
    if valid is not None:
        c = c * valid[:, None, None, :].to(c.dtype)
    return torch.linalg.vector_norm(c, ord=2, dim=-1)


def top_heads(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the top-k heads per layer: [batch, layers, k] (k clipped to the head count)."""
    k = min(k, scores.shape[-1])
    return scores.topk(k, dim=-1).indices


def layer_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """VAQ[l] = mean of the top-k heads' VAQ[l,h]: [batch, layers]."""
    k = min(k, scores.shape[-1])
    return scores.topk(k, dim=-1).values.mean(dim=-1)


def default_candidates(num_layers: int) -> list[int]:
    """The candidate layers when `vaq.layers` is null: every decoder layer but layer 0 (docs/method.md,
    VAQ: at layer 0 the last prompt token's query is its own embedding and the visual keys do not depend
    on the question, so its contrast measures RoPE distances and softmax mass, not the question); a
    one-layer model keeps its only layer."""
    return list(range(1, num_layers)) if num_layers > 1 else [0]


def select_layer(vaq: torch.Tensor, candidates: list[int] | None = None) -> torch.Tensor:
    """l* = argmax VAQ[l] over candidate layers (`default_candidates` when None): [batch] long."""
    num_layers = vaq.shape[-1]
    if candidates is None:
        candidates = default_candidates(num_layers)
    bad = [layer for layer in candidates if not -num_layers <= layer < num_layers]
    if bad or not candidates:
        raise ValueError(f"vaq.layers={candidates} outside the model's {num_layers} decoder layers")
    idx = torch.tensor([layer % num_layers for layer in candidates], device=vaq.device)
    return idx[vaq[:, idx].argmax(dim=-1)]


def head_mean(per_layer: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
    """Mean of one layer's c [batch, heads, n_visual] over the chosen heads ([batch, k] indices; every
    head when None): [batch, n_visual]."""
    if heads is None:
        return per_layer.mean(dim=1)
    index = heads.unsqueeze(-1).expand(-1, -1, per_layer.shape[-1])
    return per_layer.gather(1, index).mean(dim=1)


def localisation_map(
    c: torch.Tensor, layer: torch.Tensor, heads: torch.Tensor | None
) -> torch.Tensor:
    """M = mean of c[l*, h] over the chosen heads (all heads when `heads` is None): [batch, n_visual].

    layer: [batch]; heads: [batch, layers, k] head indices (from `top_heads`).
    """
    batch = torch.arange(c.shape[0], device=c.device)
    return head_mean(c[batch, layer], None if heads is None else heads[batch, layer])


def ratio_map(
    a_plus: torch.Tensor, a_zero: torch.Tensor, layer: torch.Tensor, heads: torch.Tensor | None
) -> torch.Tensor:
    """ViCrop's relative attention: M = mean_h(a+[l*, h]) / mean_h(a0[l*, h]) over the chosen heads
    (all when `heads` is None) — the head means divided, not a mean of per-head ratios: [batch, n_visual].

    No epsilon: where mean_h(a0) underflows to 0 the denominator is the smallest normal float32, so the
    map stays finite (a+ <= 1); anywhere else it is the plain quotient.
    """
    plus = localisation_map(a_plus.float(), layer, heads)
    zero = localisation_map(a_zero.float(), layer, heads)
    return plus / zero.clamp_min(torch.finfo(torch.float32).tiny)
