"""The attention probe: last-row softmax attention over visual tokens, without `output_attentions`.

A function registered in `transformers.AttentionInterface` wraps the model's own kernel (sdpa, flash,
eager, flex ...) and, while a capture is active, also computes `softmax(q[t0] K^T * scale + mask)` for
the last query position t0 only, keeping `[batch, layers, heads, n_visual]` numbers. It is installed
only on the language model's attention modules (their config's attention implementation routes them to
`laser_probe_<kernel>`, set once at `install`; the wrapped kernel still sees its own name, through
`laser.compat.attention_kernel_as`). The mask row is built from the
forward's 2-D padding mask and the layer's own window (`last_row_mask`), whatever mask format the
kernel receives (docs/method.md, "Attention probe").
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

from ..compat import (
    attention_kernel,
    attention_kernel_as,
    mask_function_registered,
    registered_mask_function,
    set_attention_kernel,
)

PROBE_PREFIX = "laser_probe_"


def last_row_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    key_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax attention of the last query over all keys, in float32, on the query's device.

    query: [batch, heads, q_len, dim]; key: [batch, kv_heads, kv_len, dim] (GQA handled without
    repeating keys); key_mask: which keys the last query attends to, [batch, kv_len] bool (see
    `last_row_mask`), or a full mask [batch, 1|heads, q_len, kv_len] (bool, True = attend, or additive
    float) whose last row is used; None attends to every key. Returns [batch, heads, kv_len].
    """
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query[:, :, -1, :].float().reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # [B, kvH, G, T]
    scores = scores.reshape(batch, heads, kv_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if key_mask is not None:
        mask = key_mask.to(scores.device)
        if mask.dim() == 4:
            mask = mask[:, :, -1, -kv_len:]  # [B, 1|H, T]
            if not mask.dtype == torch.bool:
                mask = mask > torch.finfo(mask.dtype).min / 2  # additive: 0 keeps, the dtype's min masks
        else:
            mask = mask.bool()[:, None, :]
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def last_row_mask(
    padding_mask: torch.Tensor | None,
    batch: int,
    kv_len: int,
    window: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Which of the `kv_len` keys the last query attends to: [batch, kv_len] bool, or None for all.

    Built from the forward's 2-D padding mask ([batch, past + new], 1 = token; None = no padding) and
    the layer's sliding window (key k is seen when `k > q - window`, the query being the last key), the
    same for every kernel: sdpa (4-D bool mask or None), eager (additive), flash (2-D or None) and
    flex (BlockMask) all describe this row. The last query of a causal LM sees every earlier key. The
    mask is made on `device` (the layer's, for a model split over devices).
    """
    mask = None
    if padding_mask is not None:
        mask = padding_mask[:, -kv_len:].to(device=device, dtype=torch.bool)
        if mask.shape[-1] != kv_len:
            raise ValueError(
                f"attention probe: the padding mask covers {mask.shape[-1]} positions, the layer sees {kv_len} keys"
            )
    if isinstance(window, int) and 0 < window < kv_len:
        recent = torch.arange(kv_len, device=device) > kv_len - 1 - window  # [T]
        mask = recent.expand(batch, -1) if mask is None else mask & recent
    return mask


class AttentionCapture:
    """Rows recorded during one forward: attention of the last position over `key_positions`.

    key_positions: [batch, n_visual] absolute key indices (padded entries point at 0 and are
    flagged in `valid`); padding_mask: the forward's 2-D attention mask [batch, past + new] (None: no
    padding). Each layer's rows are computed on that layer's device (a model split over devices) and
    kept on the device of `key_positions`, so `result` stacks rows of one device.
    """

    def __init__(self, key_positions: torch.Tensor, num_layers: int, padding_mask: torch.Tensor | None):
        self.key_positions = key_positions
        self.padding_mask = padding_mask
        self.device = key_positions.device
        self.rows: list[torch.Tensor | None] = [None] * num_layers

    def record(self, layer: int, probs: torch.Tensor) -> None:
        index = self.key_positions.to(probs.device).unsqueeze(1).expand(-1, probs.shape[1], -1)
        self.rows[layer] = probs.gather(-1, index).to(self.device)

    def result(self) -> torch.Tensor:
        """[batch, layers, heads, n_visual] float32, on the device of `key_positions`."""
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
    def probe_attention(module, query, key, value, *args, **kwargs):  # args: attention_mask, ... as given
        if kernel_name == "eager":
            kernel = _eager_kernel(module)
        else:
            kernel = ALL_ATTENTION_FUNCTIONS[kernel_name]
        # The config routes this layer to the probe; the kernel itself sees its own name (flash attention
        # reads the config's kernel name on every call).
        with attention_kernel_as(module.config, kernel_name):
            output = kernel(module, query, key, value, *args, **kwargs)
        probe: AttentionProbe | None = getattr(module, "_laser_probe", None)
        capture = probe.capture_state if probe is not None else None
        if capture is not None:
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = query.shape[-1] ** -0.5
            window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
            mask = last_row_mask(capture.padding_mask, query.shape[0], key.shape[2], window, key.device)
            probs = last_row_attention(query, key, mask, scaling, kwargs.get("softcap"))
            capture.record(module._laser_layer, probs)
        return output

    probe_attention.__name__ = f"{PROBE_PREFIX}{kernel_name}"
    return probe_attention


def register_probe_kernel(kernel_name: str) -> str:
    """Register `laser_probe_<kernel>` (attention and mask functions) and return its name."""
    name = f"{PROBE_PREFIX}{kernel_name}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_probe_kernel(kernel_name))
    if not mask_function_registered(name):
        mask_fn = registered_mask_function(kernel_name)
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
            current = attention_kernel(config) or "eager"
            if id(config) not in self._configs:
                self._configs[id(config)] = (config, current.removeprefix(PROBE_PREFIX))
            if not current.startswith(PROBE_PREFIX):
                set_attention_kernel(config, register_probe_kernel(current))
        self.installed = True
        return self

    def remove(self) -> None:
        for module in self.modules:
            for attr in ("_laser_probe", "_laser_layer"):
                if hasattr(module, attr):
                    delattr(module, attr)
        for config, original in self._configs.values():
            set_attention_kernel(config, original)
        self._configs.clear()
        self.installed = False

    @contextmanager
    def capture(self, key_positions: torch.Tensor, padding_mask: torch.Tensor | None) -> Iterator[AttentionCapture]:
        """Record the last row of every probed layer during the forwards inside the block.

        key_positions: [batch, n] key indices to keep (rows come back on its device); padding_mask: the
        2-D attention mask the forwards get ([batch, past + new]; None only when nothing is padded). It is
        required: under flash or flex attention the kernel's own mask does not say which keys are padding."""
        if not self.installed:
            raise RuntimeError("AttentionProbe.capture() before install()")
        self.install()
        state = AttentionCapture(key_positions, len(self.modules), padding_mask)
        self.capture_state = state
        try:
            yield state
        finally:
            self.capture_state = None
