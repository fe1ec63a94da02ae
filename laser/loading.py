"""What a process needs before it answers: the model's dtype and each sample's seed."""

from __future__ import annotations

import hashlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that depends only on the run seed and the id (not on rank or batch)."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: float32 on CPU, bfloat16 on GPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
