"""Per-sample random streams for direct engine calls: a seed from the config's seed and the sample itself.

`content_seed(seed, image, question)` hashes the image's pixels (mode and size included) and the question
with `seed`: the same sample gets the same stream in any batch and at any position, and two different
samples get independent streams (VCD's noise, sampled tokens). `laser predict` seeds from sample ids
instead (`laser.loading.sample_seed`).
"""

from __future__ import annotations

import hashlib

from PIL import Image


def content_seed(seed: int, image: Image.Image, question: str | None) -> int:
    """A 31-bit seed from `seed`, the image's pixels and the question."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{seed}:{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    digest.update(b"\0" + (question or "").encode())
    return int.from_bytes(digest.digest()[:4], "little") & 0x7FFFFFFF
