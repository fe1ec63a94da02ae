"""The attention probe: last-row softmax attention over visual tokens, without `output_attentions`.

A function registered in `transformers.AttentionInterface` wraps the model's own kernel (sdpa, flash,
eager ...) and, while a capture is active, also computes `softmax(q[t0] K^T * scale + mask)` for the
last query position t0 only, keeping `[batch, layers, heads, n_visual]` numbers. It is installed only
on the language model's attention modules (through their config's `_attn_implementation`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PROBE_PREFIX = "laser_probe_"


def last_row_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax attention of the last query over all keys, in float32.

    query: [batch, heads, q_len, dim]; key: [batch, kv_heads, kv_len, dim] (GQA handled without
    repeating keys); attention_mask: bool (True = attend) or additive float, [batch, 1|heads, q_len, kv_len].
    Returns [batch, heads, kv_len].
    """
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query[:, :, -1, :].float().reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # [B, kvH, G, T]
    scores = scores.reshape(batch, heads, kv_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, -1, -kv_len:]  # [B, 1|H, T]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)


class AttentionCapture:
    """Rows recorded during one forward: attention of the last position over `key_positions`.

    key_positions: [batch, n_visual] absolute key indices (padded entries point at 0 and are
    flagged in `valid`).
    """

    def __init__(self, key_positions: torch.Tensor, num_layers: int):
        self.key_positions = key_positions
        self.rows: list[torch.Tensor | None] = [None] * num_layers

    def record(self, layer: int, probs: torch.Tensor) -> None:
        index = self.key_positions.to(probs.device).unsqueeze(1).expand(-1, probs.shape[1], -1)
        self.rows[layer] = probs.gather(-1, index)

    def result(self) -> torch.Tensor:
        """[batch, layers, heads, n_visual] float32."""
        missing = [i for i, r in enumerate(self.rows) if r is None]
        if missing:
            raise RuntimeError(f"attention probe saw no call for layers {missing}; is it installed?")
        return torch.stack(self.rows, dim=1)


def _eager_kernel(module: nn.Module):
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__} has no module-level eager_attention_forward")
    return fn


def _make_probe_kernel(kernel_name: str):
    def probe_attention(module, query, key, value, attention_mask, *args, **kwargs):
        if kernel_name == "eager":
            kernel = _eager_kernel(module)
        else:
            kernel = ALL_ATTENTION_FUNCTIONS[kernel_name]
        output = kernel(module, query, key, value, attention_mask, *args, **kwargs)
        probe: AttentionProbe | None = getattr(module, "_laser_probe", None)
        capture = probe.capture_state if probe is not None else None
        if capture is not None:
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = query.shape[-1] ** -0.5
            probs = last_row_attention(query, key, attention_mask, scaling, kwargs.get("softcap"))
            capture.record(module._laser_layer, probs)
        return output

    probe_attention.__name__ = f"{PROBE_PREFIX}{kernel_name}"
    return probe_attention


def register_probe_kernel(kernel_name: str) -> str:
    """Register `laser_probe_<kernel>` (attention and mask functions) and return its name."""
    name = f"{PROBE_PREFIX}{kernel_name}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_probe_kernel(kernel_name))
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(kernel_name)
        if mask_fn is None:
            raise ValueError(f"attention kernel {kernel_name!r} has no mask function to wrap")
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask_fn)
    return name


class AttentionProbe:
    """Installed on a list of attention modules (one per decoder layer); inert unless capturing."""

    def __init__(self, attention_modules: list[nn.Module]):
        self.modules = list(attention_modules)
        self.capture_state: AttentionCapture | None = None
        self._configs: dict[int, tuple[Any, str]] = {}
        self.installed = False

    def install(self) -> AttentionProbe:
        """Route the modules' attention through the probe kernel and point them at this probe.

        Idempotent; several probes on the same modules are fine (the one capturing owns them)."""
        for layer, module in enumerate(self.modules):
            module._laser_probe = self
            module._laser_layer = layer
            config = module.config
            current = config._attn_implementation or "eager"
            if id(config) not in self._configs:
                self._configs[id(config)] = (config, current.removeprefix(PROBE_PREFIX))
            if not current.startswith(PROBE_PREFIX):
                config._attn_implementation = register_probe_kernel(current)
        self.installed = True
        return self

    def remove(self) -> None:
        for module in self.modules:
            for attr in ("_laser_probe", "_laser_layer"):
                if hasattr(module, attr):
                    delattr(module, attr)
        for config, original in self._configs.values():
            config._attn_implementation = original
        self._configs.clear()
        self.installed = False

    @contextmanager
    def capture(self, key_positions: torch.Tensor) -> Iterator[AttentionCapture]:
        """Record the last row of every probed layer during the forwards inside the block."""
        if not self.installed:
            raise RuntimeError("AttentionProbe.capture() before install()")
        self.install()
        state = AttentionCapture(key_positions, len(self.modules))
        self.capture_state = state
        try:
            yield state
        finally:
            self.capture_state = None
