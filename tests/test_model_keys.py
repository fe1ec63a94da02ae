"""`laser predict` loading keys (`model.device_map`, `model.attn_implementation`, `model.processor.<kwarg>`,
`model.max_memory`): validated, passed to `from_pretrained` and the processor, recorded in
run_config.json; and the Lightning module does not own the model (Lightning never moves it)."""

import json

import laser.adapters
import pytest
import torch
from run_fixtures import predict_args, run_inprocess, write_dataset
from tiny_models import TINY_BUILDERS

from laser.run.compose import ConfigError, compose


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen") / "model"
    model, processor = TINY_BUILDERS["qwen2_vl"]()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_device_map_attention_and_processor_keys_reach_the_model_and_the_record(qwen_folder, tmp_path, monkeypatch):
    annotations = write_dataset(tmp_path / "data", n=2, sizes=((64, 48), (40, 64)))
    out = tmp_path / "run"
    from transformers import Qwen2VLForConditionalGeneration

    loaded, load_calls = [], []
    real, real_load = laser.adapters.create_adapter, Qwen2VLForConditionalGeneration.from_pretrained.__func__

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    def load_spy(cls, *args, **kwargs):
        load_calls.append(kwargs)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(laser.adapters, "create_adapter", spy)
    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "from_pretrained", classmethod(load_spy))
    code, stdout, err = run_inprocess(
        "predict", *predict_args(qwen_folder, annotations, out, "method=laser"),
        "model.device_map=auto", "model.attn_implementation=sdpa", "model.processor.max_pixels=1024",
    )
    assert code == 0, err
    assert "2/2 samples" in stdout and "0 errors" in stdout
    adapter = loaded[0]
    assert len(load_calls) == 1 and load_calls[0]["device_map"] == "auto"  # loaded once, placed by accelerate
    assert load_calls[0]["attn_implementation"] == "sdpa" and adapter.device == torch.device("cpu")
    assert adapter.language_config()._attn_implementation == "laser_probe_sdpa"  # sdpa, through the probe
    assert adapter.model.config.vision_config._attn_implementation == "sdpa"
    assert adapter.processor.image_processor.size["longest_edge"] == 1024
    recorded = json.loads((out / "run_config.json").read_text())["model"]
    assert recorded["device_map"] == "auto" and recorded["attn_implementation"] == "sdpa"
    assert recorded["processor"] == {"max_pixels": 1024} and recorded["max_memory"] is None


def test_model_keys_compose_into_load_arguments():
    from laser.run.compose import model_load_kwargs

    cfg = compose([
        "model.device_map=auto", "model.attn_implementation=flash_attention_2", "model.processor.max_pixels=1003520",
        "model.max_memory={0: 70GiB, cpu: 200GiB}",
    ])
    assert model_load_kwargs(cfg) == {
        "device_map": "auto",
        "attn_implementation": "flash_attention_2",
        "max_memory": {0: "70GiB", "cpu": "200GiB"},
        "processor_kwargs": {"max_pixels": 1003520},
    }
    assert model_load_kwargs(compose([])) == {}
    assert compose(["model.device_map=cuda:1"]).model.device_map == "cuda:1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.device_map=everywhere"], "model.device_map='everywhere'"),
        (["model.attn_implementation=fast"], "model.attn_implementation='fast'"),
        (["model.max_memory={0: 10GiB}"], "model.max_memory needs model.device_map"),
        (["model.device_map=auto", "trainer.devices=2"], "one process per node: set trainer.devices=1"),
        (["model.processor=7"], "model.processor=7"),
        (["model.quantize=true"], "unknown key 'model.quantize'"),
    ],
)
def test_bad_model_keys_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        compose(overrides)


def test_load_arguments_put_weights_straight_on_the_process_device():
    from laser.loading import load_kwargs

    assert load_kwargs({}, torch.device("cpu")) == {}
    assert load_kwargs({}, torch.device("cuda", 3)) == {"device_map": {"": "cuda:3"}}
    assert load_kwargs({"device_map": "auto", "processor_kwargs": {}}, torch.device("cuda", 0)) == {"device_map": "auto"}


def test_lightning_never_moves_the_model_nor_copies_it_to_host(llava_adapter, monkeypatch, tmp_path):
    """The model is not a submodule: Lightning's `model.to(root_device)` at setup and `.cpu()` at
    teardown (a host copy of every weight, per rank) never reach it, and it has no parameters to move."""
    import lightning.pytorch as pl

    from laser.method.config import LaserConfig
    from laser.method.engine import LaserEngine
    from laser.run.datamodule import VQADataModule
    from laser.run.lightning import LaserModule

    engine = LaserEngine(llava_adapter, LaserConfig.preset("vanilla"))
    moved = []
    real_apply = type(llava_adapter.model)._apply

    def spy(self, fn, *args, **kwargs):
        moved.append(type(self).__name__)
        return real_apply(self, fn, *args, **kwargs)

    monkeypatch.setattr(type(llava_adapter.model), "_apply", spy)
    module = LaserModule(model="unused", engine=engine)
    assert list(module.parameters()) == []
    annotations = write_dataset(tmp_path / "data", n=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    outputs = trainer.predict(module, datamodule=VQADataModule(annotations=annotations), return_predictions=True)
    engine.probe.remove()
    assert sum(len(batch) for batch in outputs) == 2
    assert moved == []


def test_runs_recorded_before_the_loading_keys_resume_and_a_changed_device_map_does_not_matter():
    from laser.records.files import config_differences

    before = {"model": {"name_or_path": "m", "dtype": "auto"}}  # run_config.json of an earlier version
    now = {"model": {"name_or_path": "m", "dtype": "auto", "device_map": None, "attn_implementation": None,
                     "processor": {}, "max_memory": None}}
    assert config_differences(before, now) == []
    moved = {"model": {**now["model"], "device_map": "auto", "max_memory": {"0": "70GiB"}}}
    assert config_differences(now, moved) == []  # where the weights sit does not change a prediction
    resized = {"model": {**now["model"], "processor": {"max_pixels": 1024}, "attn_implementation": "eager"}}
    assert config_differences(now, resized) == [
        "model.attn_implementation: None -> 'eager'", "model.processor.max_pixels: '<absent>' -> 1024",
    ]
