"""The layout is proved, not assumed: with a local vision tower (each visual token sees only its own
patch), changing one region of the image changes exactly the tokens the layout places over it."""

import numpy as np
import pytest
import torch
from adapter_checks import cell_boxes, language_input_embeddings
from laser.adapters import create_adapter
from PIL import Image


@pytest.fixture(scope="module")
def local_adapters():
    from tiny_models import tiny_llava

    out = {}
    for do_pad in (False, True):
        model, processor = tiny_llava(vision_layers=0, do_pad=do_pad)  # the LM sees the patch embeddings
        out[do_pad] = create_adapter("llava", model=model, processor=processor)
    return out


def _overlap(a, b, margin=0.0, eps=1e-6):
    width = min(a[2], b[2] + margin) - max(a[0], b[0] - margin)
    height = min(a[3], b[3] + margin) - max(a[1], b[1] - margin)
    return width > eps and height > eps


def _inside(cell, region, eps=1e-6):
    return (
        cell[0] >= region[0] - eps
        and cell[1] >= region[1] - eps
        and cell[2] <= region[2] + eps
        and cell[3] <= region[3] + eps
    )


CASES = [
    # (do_pad, width, height, region (x0, y0, x1, y1), exact)
    (False, 336, 336, (70, 42, 126, 98), True),  # square, native: patch-aligned region
    (False, 672, 336, (168 + 70, 42, 168 + 126, 98), True),  # wide: centre crop keeps x 168..504
    (False, 672, 336, (10, 40, 150, 200), True),  # wide: a region the centre crop drops
    (False, 336, 504, (28, 84 + 140, 98, 84 + 196), True),  # tall: centre crop keeps y 84..420
    (False, 1008, 672, (300, 200, 520, 380), False),  # wide, downscaled: resampling margin
    (True, 504, 336, (100, 60, 260, 200), False),  # pad to square then resize
    (True, 300, 600, (40, 350, 200, 520), False),  # tall, padded
]


@pytest.mark.parametrize("do_pad,width,height,region,exact", CASES)
def test_changed_tokens_are_the_layout_cells_over_the_region(local_adapters, do_pad, width, height, region, exact):
    adapter = local_adapters[do_pad]
    rng = np.random.default_rng(width * 7 + height)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    changed = base.copy()
    x0, y0, x1, y1 = region
    changed[y0:y1, x0:x1] = 255 - changed[y0:y1, x0:x1]
    images = [Image.fromarray(base), Image.fromarray(changed)]
    inputs = adapter.build_inputs(images, ["What is the color ?"] * 2)
    embeddings = language_input_embeddings(adapter, inputs)
    layout = adapter.visual_layout(inputs, 0)
    assert torch.equal(layout.positions, adapter.visual_layout(inputs, 1).positions)
    positions = layout.positions
    differs = (embeddings[0, positions] - embeddings[1, positions]).abs().amax(-1) > 1e-5
    text_positions = torch.ones(embeddings.shape[1], dtype=torch.bool)
    text_positions[positions] = False
    assert torch.allclose(embeddings[0, text_positions], embeddings[1, text_positions])

    cells = [  # pixel boxes of the layout's cells, in position order
        (x0 * width, y0 * height, x1 * width, y1 * height)
        for segment in layout.segments
        for x0, y0, x1, y1 in cell_boxes(segment)
    ]
    cell_w = cells[0][2] - cells[0][0]
    if exact:
        expected = torch.tensor([_overlap(c, region) for c in cells])
        assert torch.equal(differs, expected), f"{int(differs.sum())} changed vs {int(expected.sum())} expected"
    else:
        must = torch.tensor([_inside(c, region) for c in cells])
        may = torch.tensor([_overlap(c, region, margin=cell_w) for c in cells])
        assert must.any()
        assert (differs | ~must).all(), "a cell inside the region did not change"
        assert (~differs | may).all(), "a cell away from the region changed"
