"""Which part of the original image a processor's fixed-size view shows."""

from __future__ import annotations

from typing import Any

from .base import Box


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def processor_view_box(image_processor: Any, size: tuple[int, int]) -> Box:
    """Normalised (x0, y0, x1, y1) of the original image that a CLIP-style processor keeps.

    Handles pad-to-square (`do_pad`, box extends outside [0, 1]), shortest-edge resize followed by
    a centre crop (box inside [0, 1]) and plain resize to a fixed size (the whole image).
    size: (width, height) of the original image.
    """
    width, height = size
    if getattr(image_processor, "do_pad", False):
        side = max(width, height)
        pad_x, pad_y = (side - width) // 2, (side - height) // 2
        return (-pad_x / width, -pad_y / height, (side - pad_x) / width, (side - pad_y) / height)
    resize = getattr(image_processor, "size", None)
    shortest = _get(resize, "shortest_edge") if getattr(image_processor, "do_resize", True) else None
    crop = getattr(image_processor, "crop_size", None)
    if shortest and getattr(image_processor, "do_center_crop", False) and crop is not None:
        short, long = min(width, height), max(width, height)
        new_long = int(shortest * long / short)
        new_w, new_h = (shortest, new_long) if width <= height else (new_long, shortest)
        crop_w, crop_h = int(_get(crop, "width")), int(_get(crop, "height"))
        left, top = int((new_w - crop_w) / 2.0), int((new_h - crop_h) / 2.0)
        return (left / new_w, top / new_h, (left + crop_w) / new_w, (top + crop_h) / new_h)
    return (0.0, 0.0, 1.0, 1.0)
