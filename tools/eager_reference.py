"""Eager attention rows, the reference the attention probe is checked against (tests and
tools/gpu_check.py): the model's own `output_attentions` with the eager kernel, last row, visual keys."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from laser.compat import attention_kernel, set_attention_kernel
from laser.method.attention import model_tensors, pad_positions


@contextmanager
def eager_language_model(adapter):
    """Temporarily run the language model's attention with the eager kernel."""
    configs = {id(m.config): m.config for m in adapter.attention_modules()}
    saved = {k: attention_kernel(c) for k, c in configs.items()}
    try:
        for c in configs.values():
            set_attention_kernel(c, "eager")
        yield
    finally:
        for k, c in configs.items():
            set_attention_kernel(c, saved[k])


@torch.no_grad()
def eager_rows(adapter, inputs) -> torch.Tensor:
    """Last-row attention over the layout's visual positions from eager `output_attentions`:
    [batch, layers, heads, n_visual]."""
    layouts = [adapter.visual_layout(inputs, i) for i in range(len(inputs["input_ids"]))]
    positions, _ = pad_positions(layouts)
    model_inputs = adapter.prepare_model_inputs(model_tensors(inputs))
    position_ids = adapter.position_ids(model_inputs["attention_mask"])
    if position_ids is not None:
        model_inputs["position_ids"] = position_ids
    with eager_language_model(adapter):
        out = adapter.model(**model_inputs, output_attentions=True, use_cache=False)
    attentions = out.attentions
    if len(attentions) != adapter.num_layers:  # some models also return vision attentions
        attentions = attentions[-adapter.num_layers :]
    att = torch.stack([a[:, :, -1, :].float().cpu() for a in attentions], dim=1)  # [B, L, H, T]
    del out, attentions  # at a 7B shape the full attentions are gigabytes
    index = positions[:, None, None, :].expand(-1, att.shape[1], att.shape[2], -1)
    return att.gather(-1, index)
