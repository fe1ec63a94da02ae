"""Counterfactual masking and image-mode handling (diffusion noise: tests/test_baselines_reference.py)."""

import numpy as np
import pytest
import torch
from laser.adapters.base import VisualLayout, VisualSegment
from PIL import Image

from laser.method.images import to_rgb
from laser.method.views import counterfactual_views


def test_counterfactual_masks_the_top_cells_with_the_channel_mean():
    image = Image.new("RGB", (40, 40), (200, 10, 10))
    image.paste((0, 0, 250), (0, 0, 20, 40))  # left half blue
    layout = VisualLayout([VisualSegment(0, torch.arange(16), (4, 4), (0.0, 0.0, 1.0, 1.0))])
    canvas = torch.zeros(40, 40)
    canvas[10:20, 20:30] = 5.0  # cell (row 1, col 2)
    canvas[30:40, 0:10] = 1.0  # cell (row 3, col 0), weaker
    masked, cells = counterfactual_views(
        [image], layout, [(0.0, 0.0, 1.0, 1.0)], canvas, 1 / 16, "mean", torch.Generator()
    )
    assert cells == [(0, (0.5, 0.25, 0.75, 0.5))]
    out = np.asarray(masked[0])
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0).round()
    assert (out[10:20, 20:30] == mean).all()
    outside = np.ones((40, 40), dtype=bool)
    outside[10:20, 20:30] = False
    assert (out[outside] == np.asarray(image)[outside]).all()
    masked2, cells2 = counterfactual_views(
        [image], layout, [(0.0, 0.0, 1.0, 1.0)], canvas, 2 / 16, "mean", torch.Generator()
    )
    assert [c[1] for c in cells2] == [(0.5, 0.25, 0.75, 0.5), (0.0, 0.75, 0.25, 1.0)]


def test_counterfactual_on_a_crop_uses_the_map_under_the_crop():
    # the focused view shows the right half of the original; the map peak sits at its top-right
    image = Image.new("RGB", (20, 40), (50, 50, 50))
    layout = VisualLayout([VisualSegment(0, torch.arange(4), (2, 2), (0.0, 0.0, 1.0, 1.0))])
    canvas = torch.zeros(40, 40)
    canvas[0:10, 35:40] = 1.0
    _, cells = counterfactual_views(
        [image], layout, [(0.5, 0.0, 1.0, 1.0)], canvas, 0.25, "mean", torch.Generator()
    )
    assert cells == [(0, (0.5, 0.0, 1.0, 0.5))]


def test_zero_mask_ratio_masks_nothing():
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    layout = VisualLayout([VisualSegment(0, torch.arange(4), (2, 2), (0.0, 0.0, 1.0, 1.0))])
    masked, cells = counterfactual_views([image], layout, [(0, 0, 1, 1)], torch.ones(8, 8), 0.0, "mean", torch.Generator())
    assert cells == [] and np.array_equal(np.asarray(masked[0]), np.asarray(image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_to_rgb_converts_every_mode(mode):
    image = Image.new("RGB", (6, 4), (10, 200, 30)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (6, 4)


def test_to_rgb_rejects_non_images():
    with pytest.raises(TypeError, match="images\\[2\\]"):
        to_rgb("picture.png", "images[2]")
