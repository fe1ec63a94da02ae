"""Direct engine calls without seeds: one random stream per sample, from the sample itself."""

import numpy as np
import pytest
from conftest import random_image
from PIL import Image

import laser.method.engine as engine_module
from laser.method.config import LaserConfig
from laser.method.engine import LaserEngine
from laser.method.seeding import content_seed


def _grey(level: int) -> Image.Image:
    return Image.fromarray(np.full((200, 300, 3), level, dtype=np.uint8))


def test_two_images_of_one_batch_get_independent_vcd_noise(llava_adapter, monkeypatch):
    captured = []
    real = engine_module.diffusion_noise_inputs

    def capture(inputs, pixel_rows, seeds, step, steps):
        out = real(inputs, pixel_rows, seeds, step, steps)
        captured.append(out["pixel_values"].detach().clone())
        return out

    monkeypatch.setattr(engine_module, "diffusion_noise_inputs", capture)
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vcd", **{"decode.max_new_tokens": 1}))
    engine.answer_batch([_grey(90), _grey(160)], ["What is it ?", "What is it ?"])
    noisy = captured[0]  # [2, 3, H, W]: flat images, so what varies within a channel is the noise alone
    centred = noisy - noisy.mean(dim=(2, 3), keepdim=True)
    a, b = centred[0].flatten().double(), centred[1].flatten().double()
    correlation = float((a @ b) / (a.norm() * b.norm()))
    assert abs(correlation) < 0.02  # one shared stream gave 1.0


def test_a_sample_gets_the_same_sampled_answer_in_any_batch_and_position(llava_adapter, five_samples):
    images, questions = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vcd", **{"decode.max_new_tokens": 4}))
    alone = engine.answer(images[2], questions[2])
    in_batch = engine.answer_batch(images[:4], questions[:4])[2]
    reversed_batch = engine.answer_batch(images[2::-1], questions[2::-1])[0]
    assert alone.token_ids == in_batch.token_ids == reversed_batch.token_ids


def test_content_seed_follows_pixels_question_and_seed():
    image = random_image(64, 48, seed=1)
    base = content_seed(0, image, "q")
    assert content_seed(0, image.copy(), "q") == base
    assert len({base, content_seed(1, image, "q"), content_seed(0, image, "r"),
                content_seed(0, random_image(64, 48, seed=2), "q"), content_seed(0, image.convert("L"), "q")}) == 5


def test_explicit_seeds_must_match_the_batch(llava_adapter, five_samples):
    images, questions = five_samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vanilla"))
    with pytest.raises(ValueError, match="1 seeds for 2 samples"):
        engine.answer_batch(images[:2], questions[:2], seeds=[1])


def test_laser_predict_seeds_follow_the_sample_id_whatever_the_rank(monkeypatch):
    from laser.loading import sample_seed
    from laser.method.prediction import Prediction
    from laser.run.lightning import LaserModule

    seen = []

    class Recorder:  # a stand-in engine: records the seeds it is given
        config = LaserConfig.preset("vanilla")

        def answer_batch(self, images, questions, seeds=None, features=None):
            seen.append(list(seeds))
            return [Prediction(answer="x", path="vanilla") for _ in images]

    batch = [{"sample_id": sid, "image": random_image(32, 32, seed=i), "question": "What is it ?", "answers": ["x"]}
             for i, sid in enumerate(("a", "b"))]
    for rank in (0, 3):
        module = LaserModule(model="unused", method="vanilla", seed=5, engine=Recorder())
        monkeypatch.setattr(LaserModule, "global_rank", property(lambda self, rank=rank: rank))
        module.predict_step(batch)
    assert seen == [[sample_seed(5, "a"), sample_seed(5, "b")]] * 2
