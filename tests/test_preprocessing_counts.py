"""Each distinct image is preprocessed once per sample (issue 14), for every preset, on a tiny LLaVA and a
tiny Qwen2-VL; features made by `image_preprocessor()` (DataLoader workers) replace that work."""

from __future__ import annotations

import pytest
import torch
from conftest import random_image
from laser.adapters import create_adapter
from tiny_models import TINY_BUILDERS

from laser import LaserConfig, LaserEngine, list_presets
from laser.method.attention import model_tensors
from laser.method.preprocessing import processing_once


class CountingImageProcessor:
    """Stands in for a processor's image processor and counts what reaches it."""

    def __init__(self, inner):
        self.__dict__.update(inner=inner, calls=0, images=0)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, images=None, *args, **kwargs):
        groups = images if isinstance(images, (list, tuple)) else [images]
        self.__dict__["calls"] += 1
        self.__dict__["images"] += sum(len(g) if isinstance(g, (list, tuple)) else 1 for g in groups)
        return self.inner(images, *args, **kwargs)


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def counted(request):
    """(adapter, counter): the adapter's image processor counts its calls and images."""
    model, processor = TINY_BUILDERS[request.param]()
    counter = CountingImageProcessor(processor.image_processor)
    object.__setattr__(processor, "image_processor", counter)
    return create_adapter(request.param, model=model, processor=processor), counter


def _count(adapter, counter, monkeypatch, engine, image, question, **kwargs):
    """(processor calls, images preprocessed, prediction) of answering one sample; `counter.calls` counts
    the image-processor invocations among them."""
    calls = []
    build = adapter.build_inputs

    def counting_build(*args, **kw):
        calls.append(1)
        return build(*args, **kw)

    monkeypatch.setattr(adapter, "build_inputs", counting_build)
    before = counter.images
    prediction = engine.answer_batch([image], [question], **kwargs)[0]
    monkeypatch.setattr(adapter, "build_inputs", build)
    return len(calls), counter.images - before, prediction


def _distinct_images(prediction) -> int:
    """The images a sample's answer needs: the original, and the crop if one was made (the negative
    views — LASER's masked view, VCD's noise — are made on the processed pixel tensor)."""
    cropped = prediction.box is not None and prediction.path != "vanilla"
    return 1 + int(cropped)


# every preset; `auto` ones through both paths (gate depth 0: contrastive, above 1: direct)
CASES = [
    pytest.param(preset, gate, id=f"{preset}-{path}")
    for preset in list_presets()
    for gate, path in (
        ((0.0, "contrastive"), (1.01, "direct")) if LaserConfig.preset(preset).decode.mode == "auto" else ((0.5, "own"),)
    )
]


@pytest.mark.parametrize("preset,gate", CASES)
def test_each_distinct_image_preprocessed_once(counted, monkeypatch, preset, gate):
    adapter, counter = counted
    config = LaserConfig.preset(preset, **{"decode.max_new_tokens": 2, "gate.depth": gate})
    engine = LaserEngine(adapter, config)
    image_calls = counter.calls
    calls, images, pred = _count(adapter, counter, monkeypatch, engine, random_image(500, 300), "What is the color ?")
    image_calls = counter.calls - image_calls
    assert images == _distinct_images(pred) <= 2, f"{preset} ({pred.path}): {images} images preprocessed"
    assert image_calls == images, f"{preset} ({pred.path}): {image_calls} image-processor calls for {images} images"
    # the original, with and without the question (VAQ's a+ / a0 prompts in one call), then the focused view
    assert calls == (2 if config.localize else 1) <= 2, f"{preset} ({pred.path}): {calls} processor calls"


def test_worker_features_replace_the_originals_preprocessing(counted, monkeypatch):
    adapter, counter = counted
    engine = LaserEngine(adapter, LaserConfig.preset("laser", **{"decode.max_new_tokens": 3, "gate.depth": 1.01}))
    image, question = random_image(500, 300, seed=3), "Is there a red box ?"
    preprocess = engine.image_preprocessor()
    features = preprocess(image)
    _, with_features, pred = _count(adapter, counter, monkeypatch, engine, image, question, features=[features])
    _, without, reference = _count(adapter, counter, monkeypatch, engine, image, question)
    assert with_features == without - 1 == 1  # only the crop is left to preprocess
    assert pred.token_ids == reference.token_ids and pred.box == reference.box and pred.layer == reference.layer


def test_memo_gives_the_processors_own_inputs(counted):
    """Inside the scope `build_inputs` returns exactly what it returns without it (joined batches included)."""
    adapter, _ = counted
    a, b = random_image(300, 200, seed=1), random_image(150, 400, seed=2)
    images, questions = [a, [a, b]], ["What is the color ?", "How many"]
    reference = [adapter.build_inputs(images, questions), adapter.build_inputs(images, questions, with_question=False)]
    with processing_once(adapter.processor) as memo:
        got = [adapter.build_inputs(images, questions), adapter.build_inputs(images, questions, with_question=False)]
        assert memo.processed == 2
    for ref, out in zip(reference, got):
        ref, out = model_tensors(ref), model_tensors(out)
        assert ref.keys() == out.keys()
        for key in ref:
            assert torch.equal(ref[key], out[key]), key


def test_dataloader_workers_preprocess_the_originals(counted, tmp_path):
    """`laser predict`'s path: the datamodule asks the LaserModule for the engine's preprocessor, its
    worker preprocesses each image, and `vanilla` then preprocesses nothing in this process."""
    import json
    from types import SimpleNamespace

    from laser.run.datamodule import VQADataModule
    from laser.run.lightning import LaserModule

    adapter, counter = counted
    engine = LaserEngine(adapter, LaserConfig.preset("vanilla", **{"decode.max_new_tokens": 2}))
    for i in range(2):
        random_image(200 + 50 * i, 150, seed=i).save(tmp_path / f"{i}.png")
    lines = [{"sample_id": f"s{i}", "image": f"{i}.png", "question": "How many", "answer": "1"} for i in range(2)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    datamodule = VQADataModule(annotations=tmp_path / "q.jsonl", batch_size=2, num_workers=1)
    datamodule.setup("predict")
    datamodule.trainer = SimpleNamespace(lightning_module=LaserModule("tiny", "vanilla", engine=engine), world_size=1)
    batch = next(iter(datamodule.predict_dataloader()))
    assert all(item["image_features"] is not None for item in batch)
    before = counter.images
    records = LaserModule("tiny", "vanilla", engine=engine).predict_step(batch)
    assert counter.images == before and all(r["error"] is None for r in records)
    reference = engine.answer_batch([item["image"] for item in batch], ["How many"] * 2)
    assert [r["prediction"] for r in records] == [p.answer for p in reference]
