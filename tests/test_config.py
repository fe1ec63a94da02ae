"""Method presets load into `LaserConfig`; unknown keys and bad values are errors naming them."""

from pathlib import Path

import pytest

from laser import LaserConfig
from laser.method.config import list_presets
from laser.paths import config_dir


@pytest.mark.parametrize("name", list_presets())
def test_every_method_preset_loads(name):
    cfg = LaserConfig.preset(name)
    assert cfg.name == name


def test_defaults_follow_the_design():
    cfg = LaserConfig()
    assert cfg.vaq.top_heads == 8 and cfg.vaq.layers is None and cfg.vaq.map == "contrastive"
    assert cfg.crop.ratio == 0.5 and cfg.crop.min_side == 224 and cfg.crop.input == "crop"
    assert cfg.counterfactual.mask_ratio == 0.05 and cfg.counterfactual.fill == "mean"
    assert cfg.decode.alpha == 1.0 and cfg.decode.beta == 0.1 and cfg.decode.mode == "auto"
    assert cfg.gate.depth == 0.5


def test_presets_differ_where_the_design_says():
    assert LaserConfig.preset("laser_full").decode.mode == "contrastive"
    assert LaserConfig.preset("vanilla").localize is False
    vicrop = LaserConfig.preset("vicrop")
    assert (vicrop.vaq.select, vicrop.vaq.map, vicrop.crop.input) == ("fixed", "ratio", "both")
    vcd = LaserConfig.preset("vcd")
    assert (vcd.counterfactual.view, vcd.counterfactual.noise_step, vcd.decode.mode) == ("noise", 500, "contrastive")


def test_unknown_key_is_an_error(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncrop:\n  ratioo: 0.4\n")
    with pytest.raises(ValueError, match="ratioo"):
        LaserConfig.from_file(bad)


def test_bad_values_are_errors():
    with pytest.raises(ValueError, match="decode.mode"):
        LaserConfig.preset("laser", **{"decode.mode": "beam"})
    with pytest.raises(ValueError, match="crop.ratio"):
        LaserConfig.preset("laser", **{"crop.ratio": 1.5})
    with pytest.raises(ValueError, match="unknown method preset 'lazer'"):
        LaserConfig.preset("lazer")


def test_every_yaml_under_configs_parses():
    from omegaconf import OmegaConf

    files = sorted(config_dir().rglob("*.yaml"))
    assert files
    for path in files:
        assert OmegaConf.load(path) is not None, path


def test_every_trainer_model_and_method_preset_composes_and_instantiates():
    import lightning.pytorch as pl
    from laser.adapters import resolve_adapter_class

    from laser.run.compose import compose, group_names, model_ref

    for trainer in group_names("trainer"):
        cfg = compose([f"trainer={trainer}", "trainer.devices=1", "trainer.accelerator=cpu", "trainer.strategy=auto"])
        pl.Trainer(**{k: v for k, v in dict(cfg.trainer).items() if v is not None}, logger=False)
    for model in group_names("model"):
        cfg = compose([f"model={model}"])
        assert resolve_adapter_class(model_ref(cfg), cfg.model.adapter).name
    for method in list_presets():
        cfg = compose([f"method={method}"])
        assert LaserConfig.from_dict(cfg.method).name == method


# tests/fixtures/data/ is a miniature of the folders the data presets point at (their default
# `data.annotations` / `data.image_root`, relative to the working directory), each benchmark's files
# hand-written in its official distribution format: (sample ids, first sample's references).
FIXTURES = Path(__file__).parent / "fixtures"
BENCHMARK_FIXTURES = {
    "textvqa": (
        ["34602", "34603"],
        ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota", "dakota digital",
         "dakota digital", "dakota", "dakota"],
    ),
    "pope": (["1", "2"], ["yes"]),
    "aokvqa": (["22jbM6gDxdaMaunuzgrsBB"], ["D"]),
    "vstar": (["direct_attributes/sa_4690", "relative_position/sa_10049"], None),
    "gqa": (["20968379", "201307251"], ["yes"]),
    "docvqa": (["49153"], ["0.28"]),
}


def test_every_data_preset_reads_its_own_format(monkeypatch, tmp_path):
    from laser.run.compose import compose, data_kwargs, group_names
    from laser.run.datamodule import VQADataModule

    monkeypatch.chdir(FIXTURES)
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"sample_id": "x", "image": "pope.jpg", "question": "q?", "answers": ["a"]}\n')
    (tmp_path / "pope.jpg").write_bytes((FIXTURES / "data/coco/val2014/COCO_val2014_000000310196.jpg").read_bytes())
    extra = {"jsonl": [f"data.annotations={jsonl}"]}
    expected = {**BENCHMARK_FIXTURES, "jsonl": (["x"], ["a"])}
    assert set(group_names("data")) == set(expected) | {"testbed"}, "a data preset without a fixture here"
    for data in sorted(expected):
        cfg = compose([f"data={data}", *extra.get(data, [])])
        kwargs = data_kwargs(cfg)
        assert kwargs["format"] == data
        datamodule = VQADataModule(**kwargs)
        datamodule.setup("predict")
        ids, references = expected[data]
        assert datamodule.expected_ids == ids, data
        items = [item for batch in datamodule.predict_dataloader() for item in batch]
        assert [item["error"] for item in items] == [None] * len(ids), data  # every image found and read
        if references is not None:
            assert items[0]["answers"] == references, data
        for item in items:  # multiple choice: the reference letter points at the correct option
            if item["choices"]:
                assert item["choices"][ord(item["answers"][0]) - ord("A")] == item["meta"]["correct_choice"]
                assert "\nA. " in item["question"]
    # the shipped testbed split, read as shipped
    testbed = VQADataModule(**data_kwargs(compose(["data=testbed"])))
    testbed.setup("predict")
    assert len(testbed.expected_ids) == 797
