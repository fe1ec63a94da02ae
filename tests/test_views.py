"""LASER's masked view on processed pixels and image-mode handling (diffusion noise: tests/test_baselines_reference.py)."""

import math

import numpy as np
import pytest
import torch
from conftest import random_image
from laser.adapters.base import PixelView, VisualLayout, VisualSegment
from PIL import Image
from transformers import BatchFeature

from laser.method.images import to_rgb
from laser.method.views import fill_cells, ranked_cells, take_samples

UNIT = (torch.full((3,), 1 / 255), torch.zeros(3))  # a processor that only rescales to [0, 1]
WHOLE = (0.0, 0.0, 1.0, 1.0)


def processed(image: Image.Image, transform=UNIT) -> torch.Tensor:
    """[C, H, W]: the image's pixels v mapped to v * scale + offset per channel."""
    scale, offset = transform
    return (torch.from_numpy(np.asarray(image).copy()).float() * scale + offset).permute(2, 0, 1)


def test_masked_view_fills_the_top_cells_with_the_channel_mean():
    image = Image.new("RGB", (40, 40), (200, 10, 10))
    image.paste((0, 0, 250), (0, 0, 20, 40))  # left half blue
    layout = VisualLayout([VisualSegment(0, torch.arange(16), (4, 4), WHOLE)])
    canvas = torch.zeros(40, 40)
    canvas[10:20, 20:30] = 5.0  # cell (row 1, col 2)
    canvas[30:40, 0:10] = 1.0  # cell (row 3, col 0), weaker
    cells = ranked_cells(layout, [WHOLE], canvas, 1 / 16)
    assert cells == [(0, (0.5, 0.25, 0.75, 0.5))]
    pixels = processed(image)
    view = PixelView(0, WHOLE, pixels.clone())
    fill_cells([view], cells, "mean", UNIT, torch.Generator())
    mean = pixels.mean(dim=(1, 2))
    torch.testing.assert_close(view.pixels[:, 10:20, 20:30], mean[:, None, None].expand(3, 10, 10))
    outside = torch.ones(40, 40, dtype=torch.bool)
    outside[10:20, 20:30] = False
    assert torch.equal(view.pixels[:, outside], pixels[:, outside])
    cells2 = ranked_cells(layout, [WHOLE], canvas, 2 / 16)
    assert [c[1] for c in cells2] == [(0.5, 0.25, 0.75, 0.5), (0.0, 0.75, 0.25, 1.0)]


def test_masked_view_on_a_crop_uses_the_map_under_the_crop():
    # the focused view shows the right half of the original; the map peak sits at its top-right
    layout = VisualLayout([VisualSegment(0, torch.arange(4), (2, 2), WHOLE)])
    canvas = torch.zeros(40, 40)
    canvas[0:10, 35:40] = 1.0
    assert ranked_cells(layout, [(0.5, 0.0, 1.0, 1.0)], canvas, 0.25) == [(0, (0.5, 0.0, 1.0, 0.5))]


def test_zero_mask_ratio_masks_nothing():
    layout = VisualLayout([VisualSegment(0, torch.arange(4), (2, 2), WHOLE)])
    assert ranked_cells(layout, [WHOLE], torch.ones(8, 8), 0.0) == []


def test_a_cell_fills_every_view_that_shows_it():
    """A cell of the image fills its region in each view: a view of the whole image (squashed to 8x8)
    and a view of the image's right half padded below (box beyond [0, 1])."""
    whole = PixelView(0, WHOLE, torch.zeros(3, 8, 8))
    tile = PixelView(0, (0.5, 0.0, 1.0, 2.0), torch.zeros(3, 8, 8))
    other = PixelView(1, WHOLE, torch.zeros(3, 8, 8))
    fill_cells([whole, tile, other], [(0, (0.5, 0.5, 0.75, 1.0))], "noise", (torch.ones(3), torch.full((3,), 1.0)),
               torch.Generator())
    assert set(map(tuple, whole.pixels.amin(0).nonzero().tolist())) == {(y, x) for y in range(4, 8) for x in range(4, 6)}
    assert set(map(tuple, tile.pixels.amin(0).nonzero().tolist())) == {(y, x) for y in range(2, 4) for x in range(0, 4)}
    assert not other.pixels.any()


def _image_space_masked(image: Image.Image, cells, fill: str, generator: torch.Generator) -> Image.Image:
    """Reference: the cells filled on the image itself (LASER's masked view before it moved onto the
    processed pixels): the image's per-channel mean rounded to integers, or uniform 0..255 noise
    drawn [h, w, 3] per cell."""
    array = np.asarray(image).copy()
    height, width = array.shape[:2]
    mean = array.reshape(-1, 3).mean(0).round()
    for _, (x0, y0, x1, y1) in cells:
        px0, py0 = math.floor(x0 * width + 1e-6), math.floor(y0 * height + 1e-6)
        px1, py1 = math.ceil(x1 * width - 1e-6), math.ceil(y1 * height - 1e-6)
        if fill == "mean":
            array[py0:py1, px0:px1] = mean
        else:
            array[py0:py1, px0:px1] = torch.randint(0, 256, (py1 - py0, px1 - px0, 3), generator=generator).numpy()
    return Image.fromarray(array)


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def unresized(request):
    """(adapter, image): a tiny model and an image its processor keeps at its size (LLaVA: the crop size;
    Qwen2-VL: sides multiples of patch x merge), so processed pixels are the image's, normalised."""
    from laser.adapters import create_adapter
    from tiny_models import TINY_BUILDERS

    model, processor = TINY_BUILDERS[request.param]()
    size = {"llava": (112, 112), "qwen2_vl": (88, 40)}[request.param]
    return create_adapter(request.param, model=model, processor=processor), random_image(*size, seed=4)


@pytest.mark.parametrize("fill", ["mean", "noise"])
def test_processed_masking_equals_processing_the_image_space_masked_image(unresized, fill):
    """On an image the processor does not resize, the masked view on processed pixels equals the
    processed image-space masked image: exactly (float rounding) for `noise`; for `mean` the masked cells
    within half a grey level (the image-space mean is rounded to integers)."""
    adapter, image = unresized
    inputs = adapter.build_inputs([image], ["What is it ?"])
    assert torch.allclose(adapter.pixel_views(inputs, 0)[0].pixels, processed(image, adapter.pixel_transform()), atol=1e-5)
    canvas = torch.rand(image.height, image.width, generator=torch.Generator().manual_seed(1))
    cells = ranked_cells(adapter.visual_layout(inputs, 0), [WHOLE], canvas, 0.1)
    assert len(cells) >= 4
    masked = BatchFeature({**inputs, "pixel_values": inputs["pixel_values"].clone()})
    fill_cells(adapter.pixel_views(masked, 0), cells, fill, adapter.pixel_transform(), torch.Generator().manual_seed(7))
    reference = _image_space_masked(image, cells, fill, torch.Generator().manual_seed(7))
    expected = adapter.build_inputs([reference], ["What is it ?"])["pixel_values"]
    scale, _ = adapter.pixel_transform()
    atol = 1e-5 if fill == "noise" else float(scale.max()) * 0.5 + 1e-5
    torch.testing.assert_close(masked["pixel_values"], expected, atol=atol, rtol=0)
    changed = (masked["pixel_values"] != inputs["pixel_values"]).sum()
    assert changed >= len(cells) * 3 * 16 * 0.9  # the fill did replace the cells' pixels


def test_pixel_view_edits_reach_every_element_of_the_inputs(unresized):
    adapter, image = unresized
    inputs = adapter.build_inputs([image], ["What is it ?"])
    masked = BatchFeature({**inputs, "pixel_values": inputs["pixel_values"].clone()})
    (view,) = adapter.pixel_views(masked, 0)
    view.pixels.add_(1.0)
    view.commit()
    torch.testing.assert_close(masked["pixel_values"], inputs["pixel_values"] + 1.0)


def test_blur_is_a_gaussian_of_the_processed_view():
    """`blur` fills a cell with the Gaussian blur (std: half the cell's longer side) of the processed view,
    edges extended: equal to a direct 2D convolution of the padded image; other pixels unchanged."""
    pixels = processed(random_image(40, 32, seed=2))
    view = PixelView(0, WHOLE, pixels.clone())
    cells = [(0, (0.0, 0.75, 0.2, 1.0)), (0, (0.4, 0.25, 0.6, 0.5))]  # a corner cell, an interior one
    fill_cells([view], cells, "blur", UNIT, torch.Generator())
    expected = pixels.clone()
    for x0, y0, x1, y1 in [(0, 24, 8, 32), (16, 8, 24, 16)]:
        sigma, reach = 4, 12
        taps = torch.arange(-reach, reach + 1, dtype=torch.float64)
        g = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (g[:, None] * g[None, :] / g.sum() ** 2).float()
        padded = torch.nn.functional.pad(expected[None], (reach,) * 4, mode="replicate")[0]
        for y in range(y0, y1):
            for x in range(x0, x1):
                expected[:, y, x] = (padded[:, y : y + 2 * reach + 1, x : x + 2 * reach + 1] * kernel).sum(dim=(1, 2))
    torch.testing.assert_close(view.pixels, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_to_rgb_converts_every_mode(mode):
    image = Image.new("RGB", (6, 4), (10, 200, 30)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (6, 4)


def test_to_rgb_rejects_non_images():
    with pytest.raises(TypeError, match="images\\[2\\]"):
        to_rgb("picture.png", "images[2]")


def test_take_samples_picks_rows_and_trims_shared_padding():
    """Rows per sample of each input; the columns padding in every chosen row are cut, left (the LM prompt)
    and right (`qformer_` keys, under their own mask: the longest prefix wins over `attention_mask`)."""
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    ids = torch.arange(12).view(3, 4) * mask
    q_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])  # right-padded, as wide as `ids`
    inputs = BatchFeature({
        "input_ids": ids, "attention_mask": mask, "token_type_ids": mask * 2,
        "qformer_input_ids": q_mask * 5, "qformer_attention_mask": q_mask,
        "pixel_values": torch.arange(6.0).view(6, 1), "laser_image_sizes": [[(1, 1)], [(2, 2)], [(3, 3)]],
        "shared": 7,
    })
    rows = {key: [1, 1, 1] for key in inputs if key not in ("pixel_values", "shared")}
    rows["pixel_values"] = [1, 2, 3]
    out = take_samples(inputs, rows, [2, 0])
    assert torch.equal(out["input_ids"], torch.tensor([[0, 9, 10, 11], [0, 0, 2, 3]])[:, 1:])
    assert torch.equal(out["attention_mask"], torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert torch.equal(out["token_type_ids"], out["attention_mask"] * 2)
    assert torch.equal(out["qformer_attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(out["qformer_input_ids"], out["qformer_attention_mask"] * 5)
    assert out["pixel_values"].flatten().tolist() == [3.0, 4.0, 5.0, 0.0]
    assert out["laser_image_sizes"] == [[(3, 3)], [(1, 1)]] and out["shared"] == 7
    first_two = take_samples(inputs, rows, [0, 1])  # consecutive samples: views, nothing trimmed
    assert first_two["pixel_values"].data_ptr() == inputs["pixel_values"].data_ptr()
    assert first_two["input_ids"].shape == (2, 4)
    with pytest.raises(ValueError, match="indices"):
        take_samples(inputs, rows, [3])
