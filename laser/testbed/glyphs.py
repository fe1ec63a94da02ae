"""Thick 5x7 bitmap digits drawn with PIL rectangles (no font files).

`draw_digit(draw, box, digit, fill)` renders digit 0-9 centred in `box` (x0, y0, x1, y1), filling
about 70% of the box height. Each font pixel is a solid block, so strokes are thick: the glyphs are
distinct when large and blur into the same blob when they are only a few pixels tall.
"""

from __future__ import annotations

from PIL import ImageDraw

FONT_5X7: dict[int, tuple[str, ...]] = {
    0: (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}

GLYPH_HEIGHT_FRACTION = 0.7


def glyph_cells(digit: int) -> list[tuple[int, int]]:
    """(col, row) of the filled cells of `digit`."""
    rows = FONT_5X7[int(digit)]
    return [(c, r) for r, line in enumerate(rows) for c, ch in enumerate(line) if ch == "#"]


def glyph_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Where the glyph of a box is drawn: centred, 70% of the box height, 5:7 aspect."""
    x0, y0, x1, y1 = box
    h = (y1 - y0) * GLYPH_HEIGHT_FRACTION
    w = h * 5.0 / 7.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)


def draw_digit(draw: ImageDraw.ImageDraw, box, digit: int, fill=(0, 0, 0)) -> None:
    gx0, gy0, gx1, gy1 = glyph_box(box)
    cw, ch = (gx1 - gx0) / 5.0, (gy1 - gy0) / 7.0
    for c, r in glyph_cells(digit):
        x0, y0 = gx0 + c * cw, gy0 + r * ch
        draw.rectangle(
            [round(x0), round(y0), round(x0 + cw) - 1, round(y0 + ch) - 1], fill=fill
        )
