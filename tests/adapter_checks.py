"""Reference computations shared by tests: eager attention rows, VAQ written out from its definition,
LM input embeddings and the cells of a layout segment."""

from __future__ import annotations

import torch
from eager_reference import eager_language_model, eager_rows  # noqa: F401  (shared with tools/gpu_check.py)

from laser.method.attention import model_tensors


def cell_boxes(segment) -> list[tuple[float, float, float, float]]:
    """Normalised (x0, y0, x1, y1) of every cell of a layout segment, row-major (the order of its
    positions). Cells over padding the processor added lie partly outside [0, 1]."""
    rows, cols = segment.grid
    x0, y0, x1, y1 = segment.box
    dx, dy = (x1 - x0) / cols, (y1 - y0) / rows
    return [
        (x0 + c * dx, y0 + r * dy, x0 + (c + 1) * dx, y0 + (r + 1) * dy) for r in range(rows) for c in range(cols)
    ]


@torch.no_grad()
def language_input_embeddings(adapter, inputs) -> torch.Tensor:
    """Hidden states entering the first decoder layer: [batch, seq, hidden]."""
    captured = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured["h"] = hidden.detach().clone()

    handle = adapter.decoder_layers()[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model_inputs = adapter.prepare_model_inputs(model_tensors(inputs))
        adapter.forward(model_inputs, use_cache=False)
    finally:
        handle.remove()
    return captured["h"]


def reference_vaq(a_plus, a_zero, top_k: int) -> list[float]:
    """docs/method.md, VAQ, written out independently of `laser.method.vaq`: per layer, the mean of the
    top-K heads' `||relu(a+ - a0)||_2`. a_plus, a_zero: [layers, heads, n_visual]."""
    layers, heads, _ = a_plus.shape
    out = []
    for layer in range(layers):
        norms = []
        for head in range(heads):
            diff = [max(0.0, float(p) - float(z)) for p, z in zip(a_plus[layer, head], a_zero[layer, head])]
            norms.append(sum(d * d for d in diff) ** 0.5)
        best = sorted(norms, reverse=True)[: min(top_k, heads)]
        out.append(sum(best) / len(best))
    return out
