"""A CLI that explains itself: `--help` per verb (every config key with its help, walked from the
dataclasses), `dry_run=true` (counts, nothing created), suggestions for mistyped keys, versions."""

import dataclasses
import json
from pathlib import Path

import pytest
from run_fixtures import run_inprocess, write_dataset

from laser.cli import COMMANDS
from laser.method.config import LaserConfig, config_keys, config_sections, list_presets
from laser.run.compose import compose, group_names
from laser.run.schema import GROUPS, DataOptions, RunOptions


def every_key() -> list:
    """(dotted key as typed on the command line, ConfigKey) for every leaf of every config dataclass."""
    keys = [(f"{group}.{k.key}", k) for group, cls in GROUPS.items() for k in config_keys(cls)]
    return keys + [(k.key, k) for k in config_keys(RunOptions)]


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_answers_help(verb):
    code, out, err = run_inprocess(verb, "--help")
    assert code == 0, err
    assert out.startswith("usage: laser") and f"laser {verb}" in out.splitlines()[0], out[:300]


def test_predict_help_lists_every_key_with_its_value_and_help():
    code, out, err = run_inprocess("predict", "--help")
    assert code == 0, err
    keys = every_key()
    assert len(keys) > 50
    for dotted, key in keys:
        assert key.doc.strip() and "\n" not in key.doc, f"{dotted} has no one-line help text"
        assert f"  {dotted}=" in out, f"{dotted} missing from laser predict --help"
        assert key.doc in out, f"the help of {dotted} is missing"
    for cls in [*GROUPS.values(), *[type(getattr(LaserConfig(), s[:-1])) for s in config_sections(LaserConfig)]]:
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), f"{cls.__name__} has no docstring"
    for group in GROUPS:
        assert all(name in out for name in group_names(group)), group
    # the values shown are the ones the command line composes to
    assert "  model.name_or_path=laser:assets/testbed/model" in out and "  method.vaq.map=contrastive" in out
    code, out, _ = run_inprocess("predict", "method=vicrop", "data.batch_size=3", "--help")
    assert code == 0 and "  method.vaq.map=ratio" in out and "  data.batch_size=3" in out


def test_data_keys_are_the_data_modules_arguments():
    from laser.run.datamodule import DataSettings

    settings = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(DataSettings)}
    assert {k.key: k.default for k in config_keys(DataOptions)} == settings


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_dry_run_counts_a_half_written_folder_and_creates_nothing(tmp_path, monkeypatch):
    from laser.records.files import write_run_config
    from laser.run.predict import run_config

    monkeypatch.chdir(tmp_path)  # Lightning would put lightning_logs/ here
    annotations = write_dataset(tmp_path / "data", n=8)
    out = tmp_path / "run"
    args = [  # model=llava names its adapter: the plan needs no checkpoint, and loads none
        "model=llava",
        "data=jsonl",
        f"data.annotations={annotations}",
        f"output_dir={out}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "dry_run=true",
    ]
    code, text, err = run_inprocess("predict", *args)
    assert code == 0, err
    assert not out.exists()
    assert "samples:          8\n" in text and "already written:  0 " in text and "to predict:       8\n" in text

    write_run_config(out, run_config(compose(args)))  # half the samples written, over two rank files
    (out / "predictions.rank0.jsonl").write_text("".join(json.dumps({"sample_id": i}) + "\n" for i in ("s000", "s002")))
    (out / "predictions.rank1.jsonl").write_text("".join(json.dumps({"sample_id": i}) + "\n" for i in ("s001", "s005")))
    before = _snapshot(tmp_path)
    code, text, err = run_inprocess("predict", *args)
    assert code == 0, err
    assert "samples:          8\n" in text and "already written:  4 " in text and "to predict:       4\n" in text
    assert "resume (same run config)" in text and "DDPStrategy" in text and "world size 2" in text
    assert "crop:\n    enabled: true" in text and "top_p: null" in text  # every method field, resolved
    # a changed method: predict would stop; the dry run says so, exits 2, and still writes nothing
    code, text, err = run_inprocess("predict", *args, "method=vanilla")
    assert code == 2 and "method.name: 'laser' -> 'vanilla'" in text and "resume=true" in err
    code, text, err = run_inprocess("predict", *args, "method=vanilla", "overwrite=true")
    assert code == 0 and "to predict:       8\n" in text and "(deleted: overwrite=true)" in text
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "arg, suggestion",
    [
        ("method.crop.ratoi=0.3", "unknown key 'method.crop.ratoi'; did you mean 'method.crop.ratio'?"),
        ("trainer.devcies=2", "did you mean 'trainer.devices'?"),
        ("outptu_dir=runs/x", "did you mean 'output_dir'?"),
        ("crop.ratio=0.3", "did you mean 'method.crop.ratio'?"),
        ("method=lasr", "unknown method preset 'lasr'; did you mean 'laser'?"),
        ("data=textvq", "did you mean 'textvqa'?"),
        ("method.decode.mode=contrastve", "did you mean 'contrastive'?"),
    ],
)
def test_a_mistyped_key_or_preset_names_the_nearest(arg, suggestion):
    code, _, err = run_inprocess("predict", arg)
    assert code == 2 and err.startswith("laser: error:") and suggestion in err, err


def test_method_config_suggests_too():
    with pytest.raises(ValueError, match="unknown key 'decode.mdoe'; did you mean 'decode.mode'"):
        LaserConfig.from_dict({"decode": {"mdoe": "direct"}})
    with pytest.raises(ValueError, match="did you mean 'vicrop'"):
        LaserConfig.preset("vicorp")
    assert "vicrop" in list_presets()


def test_run_config_records_the_versions():
    from importlib.metadata import version

    from laser import __version__
    from laser.cli import version_line
    from laser.run.predict import run_config

    versions = run_config(compose([]))["versions"]
    assert versions == {"laser": __version__, **{p: version(p) for p in ("torch", "transformers", "lightning")}}
    assert version_line() == f"laser {__version__} (torch {versions['torch']}, " + (
        f"transformers {versions['transformers']}, lightning {versions['lightning']})"
    )
