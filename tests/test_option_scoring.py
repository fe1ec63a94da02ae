"""Option scoring (V* Bench's likelihood ranking): the engine's scores against a direct computation with the
model's forward on [prompt + option], batch = one by one, LASER on its focused view, and `laser predict`
with `data.choice_mode=likelihood` on a V*-format folder scored by `laser evaluate`."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import random_image
from run_fixtures import records_by_id, run_inprocess, save_tiny_llava

from laser import LaserConfig, LaserEngine
from laser.method.attention import model_tensors
from laser.method.views import crop_view

QUESTIONS = ["What is the color of the box ?", "Is the sign on the left or right of the box ?", "How many"]
OPTIONS = [  # words of the tiny tokenizer's vocabulary (tools/tiny_lvlm.py), of different lengths
    ["The color is red .", "The color is blue .", "green", "The color of the box is yellow ."],
    ["The sign is on the right of the box .", "The sign is on the left of the box ."],
    ["two", "no box", "one"],
]
VSTAR = Path(__file__).parent / "fixtures" / "data" / "vstar_bench"


@pytest.fixture(scope="module")
def samples():
    return [random_image(500, 300, 1), random_image(300, 420, 2), random_image(336, 336, 3)], QUESTIONS, OPTIONS


def reference_scores(adapter, image, question, options):
    """Mean log-probability of each option's tokens: one uncached forward on prompt ids + option ids."""
    inputs = adapter.prepare_model_inputs(model_tensors(adapter.build_inputs([image], [question])))
    prompt = inputs["input_ids"]
    means = []
    for option in options:
        ids = torch.tensor([adapter.tokenizer(option, add_special_tokens=False)["input_ids"]])
        full = dict(inputs, input_ids=torch.cat([prompt, ids], dim=1))
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        with torch.no_grad():
            logits = adapter.model(**full).logits[0].float()
        start = prompt.shape[1] - 1  # the logits at position t predict token t + 1
        log_probs = torch.log_softmax(logits[start : start + ids.shape[1]], dim=-1)
        means.append(log_probs.gather(1, ids[0][:, None]).mean().item())
    return means


def test_vanilla_scores_equal_a_direct_forward(llava_adapter, samples):
    images, questions, options = samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vanilla"))
    results = engine.score_options(images, questions, options)
    for image, question, opts, result in zip(images, questions, options, results):
        expected = reference_scores(llava_adapter, image, question, opts)
        assert result.scores == pytest.approx(expected, abs=1e-5)
        assert result.choice == max(range(len(opts)), key=lambda k: expected[k])
        assert result.answer == opts[result.choice] and result.path == "direct" and result.box is None
        assert result.num_tokens == [len(llava_adapter.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in opts]


@pytest.mark.parametrize("preset", ["vanilla", "laser", "vcd"])
def test_batch_equals_one_by_one(llava_adapter, samples, preset):
    images, questions, options = samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset(preset))
    batch = engine.score_options(images, questions, options, seeds=[5, 6, 7])
    for i in range(3):
        single = engine.score_options([images[i]], [questions[i]], [options[i]], seeds=[5 + i])[0]
        assert batch[i].scores == pytest.approx(single.scores, abs=1e-5)
        assert (batch[i].choice, batch[i].path, batch[i].box) == (single.choice, single.path, single.box)


def test_laser_scores_on_its_focused_view(llava_adapter, samples):
    images, questions, options = samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("laser", **{"decode.mode": "direct"}))
    results = engine.score_options(images, questions, options)
    for image, question, opts, result in zip(images, questions, options, results):
        assert result.box is not None and result.layer is not None
        focused = reference_scores(llava_adapter, crop_view(image, tuple(result.box)), question, opts)
        assert result.scores == pytest.approx(focused, abs=1e-5)
        assert result.scores != pytest.approx(reference_scores(llava_adapter, image, question, opts), abs=1e-3)


def test_contrastive_scores_are_vat_scores(llava_adapter, samples):
    images, questions, options = samples
    base = {"decode.mode": "contrastive"}
    direct = LaserEngine(llava_adapter, LaserConfig.preset("laser", **{"decode.mode": "direct"}))
    no_contrast = LaserEngine(llava_adapter, LaserConfig.preset("laser", **base, **{"decode.alpha": 0.0}))
    contrast = LaserEngine(llava_adapter, LaserConfig.preset("laser", **base, **{"decode.alpha": 1.0}))
    plain = direct.score_options(images, questions, options)
    at_zero = no_contrast.score_options(images, questions, options)
    at_one = contrast.score_options(images, questions, options)
    for p, z, o in zip(plain, at_zero, at_one):
        assert z.path == o.path == "contrastive" and z.masked_cells
        assert z.scores == pytest.approx(p.scores, abs=1e-5)  # alpha = 0: s = z+ on the focused view
        assert o.scores != pytest.approx(p.scores, abs=1e-4)


def test_bad_options_are_named(llava_adapter, samples):
    images, questions, _ = samples
    engine = LaserEngine(llava_adapter, LaserConfig.preset("vanilla"))
    with pytest.raises(ValueError, match=r"options\[1\]\[0\] is empty"):
        engine.score_options(images[:2], questions[:2], [["a", "b"], ["  ", "b"]])
    with pytest.raises(ValueError, match=r"options\[0\] has 1 option"):
        engine.score_options(images[:1], questions[:1], [["a"]])
    with pytest.raises(ValueError, match="2 option lists"):
        engine.score_options(images[:1], questions[:1], [["a", "b"], ["c", "d"]])


def test_predict_likelihood_mode_writes_scores_and_letters(tmp_path):
    model = save_tiny_llava(tmp_path / "model", image_size=112)
    data = tmp_path / "vstar_bench"
    shutil.copytree(VSTAR, data)
    output = tmp_path / "run"
    args = [
        f"model={model}", "data=vstar", f"data.annotations={data}", "data.choice_mode=likelihood",
        "data.num_workers=0", "data.batch_size=2", "method=laser", f"output_dir={output}",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    code, _, err = run_inprocess("predict", *args)
    assert code == 0, err
    records = records_by_id(output)
    assert sorted(records) == ["direct_attributes/sa_4690", "relative_position/sa_10049"]
    for record in records.values():
        assert record["error"] is None
        scores = record["option_scores"]
        assert len(scores) == len(record["choices"])
        best = max(range(len(scores)), key=lambda k: scores[k])
        assert record["prediction"] == "ABCD"[best]
        assert record["question"] == json.loads((data / f"{record['sample_id']}.json").read_text())["question"]
    code, _, err = run_inprocess("evaluate", str(output))
    assert code == 0, err
    metrics = json.loads((output / "metrics.json").read_text())
    expected = sum(r["prediction"] == r["answers"][0] for r in records.values()) / 2
    assert metrics["overall"]["n"] == 2 and metrics["overall"]["accuracy"] == pytest.approx(expected)


def test_likelihood_items_need_choices_and_a_known_mode():
    from laser.run.batch import BatchContractError, check_batch
    from laser.run.datamodule import VQADataModule

    sample = {"sample_id": "q1", "question": "What ?", "image": random_image(64, 64), "score_options": True}
    with pytest.raises(BatchContractError, match="q1.*score_options=true needs 'choices'"):
        check_batch([sample])
    with pytest.raises(ValueError, match="data.choice_mode='likelyhood'"):
        VQADataModule(format="vstar", annotations=VSTAR, choice_mode="likelyhood")
