"""Con-ViCrop placement on planted maps, and painting maps through a layout."""

import pytest
import torch
from laser.adapters.base import VisualLayout, VisualSegment

from laser.method.canvas import canvas_shape, paint_map
from laser.method.crop import crop_size, place_crop, place_multiscale_crop


def planted(height, width, y, x, h=1, w=1, value=1.0):
    canvas = torch.zeros(height, width)
    canvas[y : y + h, x : x + w] = value
    return canvas


def test_crop_size_ratio_min_side_and_small_images():
    assert crop_size((1000, 800), 0.5, 224) == (500, 400)
    assert crop_size((400, 300), 0.5, 224) == (224, 224)  # never below min_side
    assert crop_size((200, 100), 0.5, 224) == (200, 100)  # the whole image when smaller
    assert crop_size((1000, 150), 0.5, 224) == (500, 150)


def test_crop_centres_on_planted_peak():
    # canvas at the image's own resolution: peak at x=700..710, y=300..310 of a 1000x800 image
    canvas = planted(800, 1000, 300, 700, 10, 10)
    box = place_crop(canvas, (1000, 800), ratio=0.5, min_side=224)
    x0, y0, x1, y1 = box
    assert (x1 - x0, y1 - y0) == (500, 400)
    assert x0 <= 700 and x1 >= 710 and y0 <= 300 and y1 >= 310
    # of all windows holding the peak, the tie-break picks the one nearest the image centre
    assert box == (250, 200, 750, 600)


def test_crop_is_clamped_at_image_borders():
    canvas = planted(100, 100, 0, 98, 2, 2)  # canvas at 1/10 of a 1000x1000 image, top-right corner
    assert place_crop(canvas, (1000, 1000), ratio=0.5, min_side=224) == (500, 0, 1000, 500)
    canvas = planted(100, 100, 99, 0)
    assert place_crop(canvas, (1000, 1000), ratio=0.3, min_side=224) == (0, 700, 300, 1000)


def test_crop_min_side_and_whole_image():
    canvas = planted(300, 400, 150, 200)
    x0, y0, x1, y1 = place_crop(canvas, (400, 300), ratio=0.25, min_side=224)
    assert (x1 - x0, y1 - y0) == (224, 224) and x0 <= 200 < x1 and y0 <= 150 < y1
    assert place_crop(planted(50, 60, 10, 10), (60, 50), 0.5, 224) == (0, 0, 60, 50)


def test_crop_follows_mass_not_single_peak():
    canvas = torch.zeros(100, 100)
    canvas[10, 10] = 3.0  # one strong pixel
    canvas[60:80, 60:80] = 0.5  # a broad region with more total mass
    x0, y0, x1, y1 = place_crop(canvas, (100, 100), ratio=0.3, min_side=1)
    assert x0 <= 60 and x1 >= 80 and y0 <= 60 and y1 >= 80  # the whole broad region, not the pixel
    # every 30x30 window from (50, 50) to (60, 60) holds it all; the tie goes to the one nearest the centre
    assert (x0, y0, x1, y1) == (50, 50, 80, 80)


def test_multiscale_crop_prefers_sharp_window_and_square():
    cells = planted(24, 24, 3, 18)  # one hot cell of a 24x24 grid over a 1600 px image
    x0, y0, x1, y1 = place_multiscale_crop(cells, (1600, 1600), base=336, ratios=[1.0, 2.0])
    assert x1 - x0 == y1 - y0 == 336
    assert x0 <= 18 * 1600 / 24 and x1 >= 19 * 1600 / 24 and y0 <= 3 * 1600 / 24 and y1 >= 4 * 1600 / 24


def test_paint_map_puts_grid_values_in_their_box():
    values = torch.arange(4, dtype=torch.float32)  # 2x2 grid: 0 1 / 2 3
    layout = VisualLayout([VisualSegment(0, torch.arange(4), (2, 2), (0.0, 0.0, 1.0, 1.0))])
    canvas = paint_map(values, layout, 0, (4, 4))
    cell_area = 0.25
    assert canvas[0, 0] == 0 and canvas[0, 3] == 1 / cell_area and canvas[3, 0] == 2 / cell_area
    assert canvas[3, 3] == 3 / cell_area


def test_paint_map_centre_crop_box_leaves_sides_empty():
    values = torch.ones(4)
    layout = VisualLayout([VisualSegment(0, torch.arange(4), (2, 2), (0.25, 0.0, 0.75, 1.0))])
    canvas = paint_map(values, layout, 0, (4, 8))
    assert canvas[:, :2].abs().sum() == 0 and canvas[:, 6:].abs().sum() == 0
    assert (canvas[:, 2:6] > 0).all()
    # density integrates to the total mass: mean over canvas x canvas area (1) = sum of values
    assert canvas.mean().item() == pytest.approx(4.0)


def test_canvas_shape_keeps_aspect():
    assert canvas_shape((2000, 1000), 512) == (256, 512)
    assert canvas_shape((100, 50), 512) == (50, 100)
