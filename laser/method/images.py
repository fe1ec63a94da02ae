"""Images as the method takes them: any PIL mode converted to 8-bit RGB, after checking it is an image."""

from __future__ import annotations

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """8-bit grey from 16/32-bit integer or float pixels.

    PIL's own conversion clips 16-bit values at 255 (a mostly white image), so values are
    rescaled: 16-bit modes by 65535 -> 255; `I`/`F` are kept if already in 0..255, scaled as
    16-bit if within 0..65535, otherwise stretched from their min..max.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = pixels / 257.0
    else:
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if low >= 0 and high <= 255:
            scaled = pixels
        elif low >= 0 and high <= 65535:
            scaled = pixels / 257.0
        else:
            scaled = (pixels - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB; transparent pixels are composited on white (not black, which is what
    dropping the alpha channel gives and which would invent dark regions)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    elif image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _high_depth_to_l(image)
    elif image.mode == "La":
        image = image.convert("LA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    return image.convert("RGB")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """An RGB version of any PIL image (see `convert_to_rgb`), after checking it is one; `name` is
    what an error message calls the input (e.g. `images[2]`)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{name} has no pixels ({image.width}x{image.height})")
    return convert_to_rgb(image)
