"""Test set-up: no network, deterministic CPU threads, shared tiny models."""

import os
import sys
from pathlib import Path

# `tools/` holds the training-only testbed code (`testbed.model`, ...), which the package does not ship.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# One thread: tiny models run faster without thread start-up, and in-process runs match the
# command-line subprocesses (OMP_NUM_THREADS=1) bit for bit.
torch.set_num_threads(1)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def llava():
    """(model, processor) of a tiny random LLaVA-1.5 (CLIP tower 336 px / patch 14, Llama LM, GQA)."""
    from tiny_models import tiny_llava

    return tiny_llava()


@pytest.fixture(scope="session")
def llava_adapter(llava):
    from laser.adapters import create_adapter

    model, processor = llava
    return create_adapter("llava", model=model, processor=processor)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def five_samples():
    sizes = [(500, 300), (300, 400), (336, 336), (640, 480), (200, 900)]
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    questions = [
        "What is the color ?",
        "Is there a red box ?",
        "What digit is in the blue box ?",
        "How many",
        "What is written on the sign ?",
    ]
    return images, questions
