"""Smoke test of tools/bench.py on tiny shapes: every section is produced and serialisable (no timing checks)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("laser_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_tiny_run_has_every_section(bench, tmp_path, dtype):
    result = bench.run("tiny", threads=1, log=lambda _msg: None, dtype=dtype)
    assert result["meta"]["dtype"] == dtype
    sections = ("meta", "attention_capture", "end_to_end", "cost_floor", "batch_throughput", "attention_memory_72b", "targets")
    for section in sections:
        assert section in result, section
    memory = result["attention_memory_72b"]
    assert set(memory["variants"]) == {"capture_a_plus_a_zero", "localise", "localise_whole_tensor_before"}
    assert memory["rows_kept_bytes"] == 2 * 4 * 8 * 256 * 4  # a+ and a0: layers x heads x n_visual float32
    assert set(result["attention_capture"]) == {"llava", "qwen2_vl_highres"}
    for shape in result["attention_capture"].values():
        assert {"sdpa", "probe"} <= set(shape["variants"])
        assert shape["probe_attention_bytes"] < shape["eager_attention_bytes"]
    assert set(result["end_to_end"]["variants"]) == {"vanilla", "laser", "laser_full", "reference"}
    assert result["end_to_end"]["variants"]["laser"]["path"] == "direct"
    assert result["end_to_end"]["variants"]["laser_full"]["path"] == "contrastive"
    assert {"full_prefill_q", "suffix_prefill_0", "focus_prefill_decode", "focus_prefill_decode_2B"} == set(
        result["cost_floor"]["pieces"]
    )
    assert set(result["batch_throughput"]) == {"batch_1", "batch_2"}
    assert all("narrowed" in s for s in result["meta"]["shapes"].values())
    assert len(result["targets"]) == len(bench.TARGETS)
    text = bench.table(result)
    assert "cost floor" in text and "targets" in text
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(result, default=str))
    assert json.loads(out.read_text())["meta"]["mode"] == "tiny"


def test_memory_phase_merges_into_time_phase(bench):
    """`--phase all` times in-process and takes peaks from the memory child: fields and ratios merge."""
    def variants(names, **fields):
        return {"variants": {n: {"median_s": 1.0, **fields.get(n, {})} for n in names}}

    e2e_names = ("vanilla", "laser", "laser_full", "reference")
    timed = {
        "meta": {"memory_method": "none"},
        "attention_capture": {"llava": variants(("sdpa", "probe"))},
        "end_to_end": {**variants(e2e_names), "ratios": {"laser_over_vanilla": 1.5}},
    }
    memory = {
        "meta": {"memory_method": "VmHWM", "wall_s": 3.0},
        "attention_capture": {"llava": variants(("sdpa", "probe"), probe={"peak_rss_delta_mib": 8.0, "median_s": 9.0})},
        "end_to_end": variants(e2e_names, vanilla={"peak_rss_delta_mib": 40.0}, laser={"peak_rss_delta_mib": 50.0},
                               laser_full={"peak_rss_delta_mib": 90.0}),
    }
    bench.merge_memory(timed, memory)
    assert timed["attention_capture"]["llava"]["variants"]["probe"] == {"median_s": 1.0, "peak_rss_delta_mib": 8.0}
    ratios = timed["end_to_end"]["ratios"]
    assert ratios["laser_over_vanilla"] == 1.5  # times are the time phase's
    assert ratios["laser_peak_mem_over_vanilla"] == 1.25 and ratios["laser_full_peak_mem_over_vanilla"] == 2.25
    met = {t["target"]: t["met"] for t in timed["targets"]}
    assert met["peak RSS delta laser/vanilla <= 1.25"] is True


def test_out_takes_a_folder_or_a_file(bench, tmp_path):
    assert bench.output_paths(str(tmp_path), "cpu") == (tmp_path / "cpu.json", tmp_path / "cpu.txt")
    new = tmp_path / "new"
    assert bench.output_paths(f"{new}/", "cuda") == (new / "gpu.json", new / "gpu.txt")
    assert bench.output_paths(str(tmp_path / "b.json"), "cpu") == (tmp_path / "b.json", None)
