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


def test_every_group_preset_composes_and_instantiates(tmp_path):
    import lightning.pytorch as pl
    from laser.adapters import resolve_adapter_class

    from laser.run.compose import compose, data_kwargs, group_names, model_ref
    from laser.run.data.datamodule import VQADataModule

    annotations = tmp_path / "a.jsonl"
    annotations.write_text('{"sample_id": "x", "image": "x.png", "question": "q?", "answers": ["a"]}\n')
    for trainer in group_names("trainer"):
        cfg = compose([f"trainer={trainer}", "trainer.devices=1", "trainer.accelerator=cpu", "trainer.strategy=auto"])
        pl.Trainer(**{k: v for k, v in dict(cfg.trainer).items() if v is not None}, logger=False)
    for model in group_names("model"):
        cfg = compose([f"model={model}"])
        assert resolve_adapter_class(model_ref(cfg), cfg.model.adapter).name
    for data in group_names("data"):
        cfg = compose([f"data={data}"])
        kwargs = data_kwargs(cfg)
        if data != "testbed":  # the others point at files the user downloads
            kwargs.update(annotations=str(annotations), image_root=str(tmp_path), format="jsonl")
        datamodule = VQADataModule(**kwargs)
        datamodule.setup("predict")
        assert datamodule.expected_ids
    for method in list_presets():
        cfg = compose([f"method={method}"])
        assert LaserConfig.from_dict(cfg.method).name == method
