"""Adapter registry: names, wildcards, local checkpoints, architectures and entry points."""

import sys
import textwrap
from importlib.metadata import EntryPoint

import laser.adapters as adapters
import pytest
from laser.adapters import (
    AdapterNotFoundError,
    VisionLanguageAdapter,
    create_adapter,
    list_adapters,
    register_adapter,
)


def test_list_adapters_with_wildcards():
    assert "llava" in list_adapters()
    assert list_adapters("llav*")[0] == "llava"
    assert list_adapters("no-such-*") == []


def test_create_adapter_wraps_a_model_in_memory(llava):
    model, processor = llava
    adapter = create_adapter("llava", model=model, processor=processor)
    assert adapter.model is model and adapter.num_layers == 4


def test_create_adapter_from_saved_folder_chooses_by_architecture(llava, tmp_path):
    model, processor = llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    adapter = create_adapter(str(tmp_path))
    assert adapter.name == "llava" and type(adapter.model).__name__ == "LlavaForConditionalGeneration"
    forced = create_adapter(tmp_path, adapter="llava")
    assert forced.name == "llava"


def test_unknown_adapter_and_unserved_architecture(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFoundError, match="'nope'"):
        create_adapter("nope")
    (tmp_path / "config.json").write_text('{"architectures": ["MysteryForVision"]}')
    with pytest.raises(AdapterNotFoundError, match="MysteryForVision"):
        create_adapter(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        create_adapter(tmp_path / "empty")  # a folder that is not a checkpoint
    with pytest.raises(AdapterNotFoundError, match="nor an existing checkpoint folder"):
        create_adapter(str(tmp_path / "missing_dir"))


def test_third_party_adapter_through_entry_point(tmp_path, monkeypatch):
    module = tmp_path / "my_family_adapter.py"
    module.write_text(
        textwrap.dedent(
            """
            from laser.adapters.llava import LlavaAdapter

            class ThrowAwayAdapter(LlavaAdapter):
                name = "throwaway"
                architectures = ("ThrowAwayForConditionalGeneration",)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="throwaway", value="my_family_adapter:ThrowAwayAdapter", group="laser.adapters")
    monkeypatch.setattr(adapters._registry, "entry_points", lambda group: [ep] if group == "laser.adapters" else [])
    adapters.reload_entry_points()
    try:
        assert "throwaway" in list_adapters()
        assert adapters.adapter_for_architecture("ThrowAwayForConditionalGeneration").name == "throwaway"
    finally:
        adapters._registry._ADAPTERS.pop("throwaway", None)
        sys.modules.pop("my_family_adapter", None)


def test_register_adapter_needs_a_name():
    with pytest.raises(ValueError, match="name"):

        @register_adapter
        class Nameless(VisionLanguageAdapter):  # noqa: F841
            pass
