"""`laser.loading.load_engine`: the one place model and method presets become an engine."""

from __future__ import annotations

import pytest
import torch

from laser import LaserConfig, LaserEngine, load_engine
from laser.loading import check_max_memory, method_spec, model_spec
from laser.paths import assets_dir
from laser.records.files import output_mode


def test_a_model_preset_resolves_to_the_shipped_folder_and_a_name_passes_through():
    spec = model_spec("testbed")
    assert spec["name_or_path"] == str((assets_dir() / "testbed" / "model").resolve())
    assert spec["adapter"] is None and spec["dtype"] == "auto"
    assert model_spec("org/some-model", adapter="llava", dtype="float16") == {
        "name_or_path": "org/some-model", "adapter": "llava", "dtype": "float16",
    }


def test_method_spec_takes_presets_files_dicts_and_configs_with_overrides(tmp_path):
    assert method_spec("laser", {"crop.ratio": 0.4}) == LaserConfig.preset("laser", **{"crop.ratio": 0.4})
    config = LaserConfig.preset("vicrop")
    assert method_spec(config) is config
    assert method_spec(config, {"decode.max_new_tokens": 3}).decode.max_new_tokens == 3
    assert method_spec(config.to_dict()) == config
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ncrop:\n  ratio: 0.3\n")
    assert method_spec(str(path)).crop.ratio == 0.3
    with pytest.raises(ValueError, match="unknown method preset 'lasr'"):
        method_spec("lasr")


def test_the_shared_checks_keep_their_messages():
    with pytest.raises(ValueError, match="resume=true and overwrite=true contradict each other; choose one"):
        output_mode(True, True)
    assert [output_mode(False, False), output_mode(True, False), output_mode(False, True)] == ["new", "resume", "overwrite"]
    with pytest.raises(ValueError, match=r"^model.max_memory needs model.device_map \(it bounds"):
        check_max_memory({0: "1GiB"}, None)
    with pytest.raises(ValueError, match=r"^max_memory.<device>= needs device_map= \(it bounds"):
        check_max_memory({0: "1GiB"}, None, ("max_memory.<device>=", "device_map="))
    check_max_memory(None, None)
    check_max_memory({0: "1GiB"}, "auto")


def test_load_engine_gives_an_eval_model_without_gradients_on_the_device():
    engine = load_engine("testbed", "vanilla", device="cpu", overrides={"decode.max_new_tokens": 2})
    assert isinstance(engine, LaserEngine) and engine.config.decode.max_new_tokens == 2
    model = engine.adapter.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert engine.adapter.device == torch.device("cpu") and next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="model.max_memory needs model.device_map"):
        load_engine("testbed", "vanilla", device="cpu", load={"max_memory": {"cpu": "1GiB"}})
