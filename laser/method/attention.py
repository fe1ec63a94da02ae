"""The two attention passes of VAQ: with the question (a+) and without it (a0).

Where the visual tokens precede the question and do not depend on it, the no-question pass reuses
the KV cache of the shared prefix: one prefix forward, then the two short continuations on that one
cache (never duplicated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers import BatchFeature
from transformers.cache_utils import DynamicLayer

from ..adapters.base import VisionLanguageAdapter, VisualLayout
from ..compat import output_cache
from .probe import AttentionProbe


@dataclass
class AttentionRows:
    """a_plus / a_zero: [batch, layers, heads, n_visual]; valid: [batch, n_visual];
    layouts: the layout of each sample in the with-question inputs."""

    a_plus: torch.Tensor
    a_zero: torch.Tensor | None
    valid: torch.Tensor
    layouts: list[VisualLayout]
    prefix_reused: bool


def model_tensors(inputs: BatchFeature | dict[str, Any]) -> dict[str, Any]:
    """Inputs the model's forward takes (drops the adapter's `laser_*` bookkeeping)."""
    return {k: v for k, v in inputs.items() if not k.startswith("laser_")}


def pad_positions(
    layouts: list[VisualLayout], offsets: list[int] | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual key positions [batch, n_max] (shifted by `offsets`) and their validity [batch, n_max],
    on `device` (the model's, so they meet the attention rows there)."""
    n_max = max(layout.n_visual for layout in layouts)
    positions = torch.zeros(len(layouts), n_max, dtype=torch.long)
    valid = torch.zeros(len(layouts), n_max, dtype=torch.bool)
    for i, layout in enumerate(layouts):
        pos = layout.positions.cpu() + (offsets[i] if offsets else 0)
        positions[i, : pos.numel()] = pos
        valid[i, : pos.numel()] = True
    return positions.to(device), valid.to(device)


def _left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(s.numel() for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for i, s in enumerate(sequences):
        if s.numel():
            ids[i, length - s.numel() :] = s
            mask[i, length - s.numel() :] = 1
    return ids, mask


def _unpadded(inputs: BatchFeature) -> list[torch.Tensor]:
    return [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


def forward_last_position(adapter: VisionLanguageAdapter, inputs: dict[str, Any], **extra: Any) -> Any:
    """A prefill of `inputs` keeping the last position's logits (`adapter.forward`)."""
    return adapter.forward(inputs, logits_to_keep=1, **extra)


def capture_full(
    adapter: VisionLanguageAdapter, probe: AttentionProbe, inputs: BatchFeature
) -> tuple[torch.Tensor, torch.Tensor, list[VisualLayout]]:
    """One full prefill with the probe on: ([batch, L, H, n_max], valid, layouts), on the model's device.

    The probe reads the adapter's `probe_positions` (the visual tokens, or a Q-Former's query
    tokens) and `project_rows` maps those rows onto the layout's cells."""
    batch = len(inputs["input_ids"])
    layouts = [adapter.visual_layout(inputs, i) for i in range(batch)]
    probe_positions = [adapter.probe_positions(inputs, i) for i in range(batch)]
    width = max(p.numel() for p in probe_positions)
    positions = torch.zeros(batch, width, dtype=torch.long)
    for i, p in enumerate(probe_positions):
        positions[i, : p.numel()] = p.cpu()
    model_inputs = adapter.prepare_model_inputs(model_tensors(inputs))
    with probe.capture(positions.to(adapter.device), model_inputs.get("attention_mask")) as capture:
        forward_last_position(adapter, model_inputs, use_cache=False)
    rows = adapter.project_rows(capture.result(), inputs, layouts)
    _, valid = pad_positions(layouts, device=rows.device)
    return rows, valid, layouts


def capture_with_prefix_reuse(
    adapter: VisionLanguageAdapter,
    probe: AttentionProbe,
    inputs_q: BatchFeature,
    inputs_0: BatchFeature,
) -> AttentionRows | None:
    """Prefix forward once, then both continuations on its cache; None if the visual tokens are not
    inside the shared prefix (the caller then runs two full prefills).

    The continuations run one after the other on the one prefix cache (cropped back in between), so
    the prefix KV is never duplicated; caches that cannot be cropped exactly (sliding-window, static,
    quantised layers) run them as one batch of 2B on a repeated cache instead."""
    layouts = [adapter.visual_layout(inputs_q, i) for i in range(len(inputs_q["input_ids"]))]
    ids_q, ids_0 = _unpadded(inputs_q), _unpadded(inputs_0)
    pad_q = [inputs_q["input_ids"].shape[1] - ids.numel() for ids in ids_q]
    prefix_lengths = []
    for i, layout in enumerate(layouts):
        shared = min(common_prefix_length(ids_q[i], ids_0[i]), ids_q[i].numel() - 1, ids_0[i].numel() - 1)
        last_visual = int(layout.positions.max()) - pad_q[i]
        if shared <= last_visual:
            return None
        prefix_lengths.append(shared)
    pad_id = adapter.tokenizer.pad_token_id or 0
    prefix_ids, prefix_mask = _left_pad([ids[:p] for ids, p in zip(ids_q, prefix_lengths)], pad_id)

    # per-token extras (token_type_ids ...) describe the full prompt; adapters rebuild them if needed
    shape = tuple(inputs_q["input_ids"].shape)
    prefix_inputs = {
        k: v
        for k, v in model_tensors(inputs_q).items()
        if not (isinstance(v, torch.Tensor) and tuple(v.shape[:2]) == shape and k != "input_ids")
    }
    prefix_inputs.update(input_ids=prefix_ids, attention_mask=prefix_mask)
    prefix_inputs = adapter.prepare_model_inputs(prefix_inputs)
    prefix_out = forward_last_position(adapter, prefix_inputs, use_cache=True)
    cache = output_cache(prefix_out)
    del prefix_out

    prefix_len = prefix_ids.shape[1]
    offsets = [pad_q_i * -1 + (prefix_len - p) for pad_q_i, p in zip(pad_q, prefix_lengths)]
    positions, valid = pad_positions(layouts, offsets, adapter.device)
    if _croppable(cache):
        prefix = CachedPrefix(cache, prefix_mask)
        a_plus = _continue(adapter, probe, prefix, [ids[p:] for ids, p in zip(ids_q, prefix_lengths)], positions, pad_id)
        a_zero = _continue(adapter, probe, prefix, [ids[p:] for ids, p in zip(ids_0, prefix_lengths)], positions, pad_id)
        return AttentionRows(a_plus, a_zero, valid, layouts, prefix_reused=True)
    continuations = []
    for i, p in enumerate(prefix_lengths):
        continuations += [ids_q[i][p:], ids_0[i][p:]]
    cache.batch_repeat_interleave(2)
    rows = _continue(
        adapter, probe, CachedPrefix(cache, prefix_mask.repeat_interleave(2, dim=0)), continuations,
        positions.repeat_interleave(2, dim=0), pad_id,
    )
    return AttentionRows(rows[0::2], rows[1::2], valid, layouts, prefix_reused=True)


def _croppable(cache: Any) -> bool:
    """True if every layer of `cache` is a plain dynamic layer, whose `crop` restores it exactly."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and hasattr(cache, "crop") and all(type(layer) is DynamicLayer for layer in layers)


class CachedPrefix(NamedTuple):
    """The KV cache of a batch's shared prompt prefix and its attention mask [rows, prefix length]."""

    cache: Any
    mask: torch.Tensor


def _continue(
    adapter: VisionLanguageAdapter,
    probe: AttentionProbe,
    prefix: CachedPrefix,
    continuations: list[torch.Tensor],
    positions: torch.Tensor,
    pad_id: int,
) -> torch.Tensor:
    """Rows [rows, L, H, n] of one left-padded batch of continuations on the prefix's cache (one row per
    cache row); the cache is cropped back to the prefix afterwards."""
    cache, prefix_mask = prefix
    cont_ids, cont_mask = _left_pad(continuations, pad_id)
    device = adapter.device
    step = {
        "input_ids": cont_ids.to(device),
        "attention_mask": torch.cat([prefix_mask, cont_mask], dim=1).to(device),
    }
    with probe.capture(positions, step["attention_mask"]) as capture:
        adapter.forward(step, cache, use_cache=True, logits_to_keep=1)
    if _croppable(cache):
        cache.crop(-cont_ids.shape[1])
    return capture.result()


def _windowed_shorter_than(adapter: VisionLanguageAdapter, length: int) -> bool:
    """True if a sliding-window layer would not see the whole prompt: its cache keeps only the last
    window of keys, so absolute visual positions no longer index it (full prefills are used instead)."""
    for module in adapter.attention_modules():
        window = getattr(module, "sliding_window", None)
        if isinstance(window, int) and 0 < window < length:
            return True
    return False


def capture_attention(
    adapter: VisionLanguageAdapter,
    probe: AttentionProbe,
    inputs_q: BatchFeature,
    inputs_0: BatchFeature | None,
    prefix_reuse: bool = True,
) -> AttentionRows:
    """a+ (and a0 when `inputs_0` is given) for a batch, with prefix reuse where the family allows."""
    if (
        inputs_0 is not None
        and prefix_reuse
        and adapter.supports_prefix_reuse
        and not _windowed_shorter_than(adapter, inputs_q["input_ids"].shape[1])
    ):
        rows = capture_with_prefix_reuse(adapter, probe, inputs_q, inputs_0)
        if rows is not None:
            return rows
    a_plus, valid, layouts = capture_full(adapter, probe, inputs_q)
    if inputs_0 is None:
        return AttentionRows(a_plus, None, valid, layouts, prefix_reused=False)
    a_zero, valid_0, _ = capture_full(adapter, probe, inputs_0)
    if a_zero.shape != a_plus.shape or not torch.equal(valid, valid_0):
        raise RuntimeError("with- and without-question prompts have different visual tokens")
    return AttentionRows(a_plus, a_zero, valid, layouts, prefix_reused=False)
