"""CPU stand-ins for the GPU attention kernels, so each transformers mask format runs in tests.

- `flash_attention(monkeypatch)`: transformers' flash-attention path (2-D padding mask or None, the
  window passed as `window_size`, un-padding into a varlen call) with the kernel loader replaced by a
  spy returning reference varlen / dense functions written from flash-attention's definition
  (bottom-right causal alignment, `window_size=(left, right)`, softcap). `spy.names` lists the
  implementation names the loader was asked for.
- `flex_attention_uncompiled(monkeypatch)`: transformers' flex-attention path (a `BlockMask`) with
  torch.compile switched off, which the CPU cannot afford in a test.
"""

from __future__ import annotations

import torch


def _attend(q, k, v, scale, causal, window, softcap):
    """One sequence: q [Lq, H, d], k/v [Lk, kvH, d] -> [Lq, H, d]."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    lq, lk = q.shape[0], k.shape[0]
    i = torch.arange(lq)[:, None] + (lk - lq)  # bottom-right aligned query positions
    j = torch.arange(lk)[None, :]
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    left, right = window
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False,
):
    out = torch.empty_like(q)
    for s in range(len(cu_seqlens_q) - 1):
        qs, qe = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        ks, ke = int(cu_seqlens_k[s]), int(cu_seqlens_k[s + 1])
        out[qs:qe] = _attend(q[qs:qe], k[ks:ke], v[ks:ke], softmax_scale, causal, window_size, softcap)
    return out


def flash_attn_func(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
    deterministic=False,
):
    return torch.stack(
        [_attend(q[b], k[b], v[b], softmax_scale, causal, window_size, softcap) for b in range(q.shape[0])]
    )


class LoaderSpy:
    def __init__(self) -> None:
        self.names: list[str | None] = []

    def __call__(self, implementation, attention_wrapper=None, allow_all_kernels=False):
        from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

        self.names.append(implementation)
        if implementation not in ("flash_attention_2", "flash_attention_3"):
            raise ValueError(
                f"Could not find the currently requested flash attention implementation at `{implementation}`."
            )
        return flash_attn_func, flash_attn_varlen_func, None, _pad_input, _unpad_input


def flash_attention(monkeypatch) -> LoaderSpy:
    """Route transformers' flash-attention kernel loader to the CPU reference; returns the spy."""
    import transformers.modeling_flash_attention_utils as fa

    spy = LoaderSpy()
    monkeypatch.setattr(fa, "_lazy_imports", spy)
    monkeypatch.setattr(fa, "_loaded_implementation", None)
    return spy


def flex_attention_uncompiled(monkeypatch) -> None:
    import transformers.integrations.flex_attention as flex
    import transformers.masking_utils as masking
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def uncompiled(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    def block_mask(*args, **kwargs):
        kwargs["_compile"] = False
        return create_block_mask(*args, **kwargs)

    monkeypatch.setattr(flex, "compile_friendly_flex_attention", uncompiled)
    monkeypatch.setattr(masking, "create_block_mask", block_mask)
