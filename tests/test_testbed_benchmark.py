"""Oracle crops and the results table of the testbed benchmark, by hand."""

from laser.method.config import CropConfig
from laser.testbed.benchmark import oracle_box, paired_difference_ci, results_table, tight_oracle_box


def test_oracle_box_has_laser_crop_size_centred_and_clamped():
    meta = {"target_box": [100, 100, 140, 140]}
    assert oracle_box(meta, (512, 512)) == (0, 0, 256, 256)  # centre 120 -> clamped at the border
    meta = {"target_box": [300, 200, 340, 240]}
    assert oracle_box(meta, (512, 512)) == (192, 92, 448, 348)
    # the size comes from the crop config (the laser preset's 0.5 / 224 by default), not a copy of it
    assert oracle_box(meta, (512, 512), CropConfig(ratio=0.25, min_side=64)) == (256, 156, 384, 284)


def test_tight_oracle_box_and_anchor_union():
    assert tight_oracle_box({"target_box": [200, 200, 240, 240]}, (512, 512)) == (170, 170, 270, 270)
    meta = {"target_box": [200, 200, 240, 240], "anchor_box": [300, 200, 340, 240]}
    # 1.2 x the 140 px joint box = 168 px (more than 2.5 x the 40 px target), centred on the pair
    assert tight_oracle_box(meta, (512, 512)) == (186, 136, 354, 304)
    assert tight_oracle_box({"target_box": [10, 10, 14, 14]}, (512, 512)) == (0, 0, 64, 64)  # at least 64 px


def test_results_table_and_paired_difference():
    rows = lambda correct: [  # noqa: E731
        {"sample_id": str(i), "family": "reading", "size": "small", "correct": c} for i, c in enumerate(correct)
    ]
    results = {"vanilla": rows([0, 0, 1, 0]), "laser": rows([1, 1, 1, 0])}
    mean, low, high = paired_difference_ci([1, 1, 1, 0], [0, 0, 1, 0])
    assert mean == 0.5 and low <= mean <= high
    table = results_table(results)
    assert "| laser | 75.0" in table and "| vanilla | 25.0" in table and "+50.0" in table


def test_the_testbed_tables_and_laser_compare_give_one_interval_for_one_comparison():
    """The paired difference of the testbed tables and of `laser compare` on the same runs: same mean, same
    interval (same metric, resamples, seed and sample order)."""
    import json
    from pathlib import Path

    from laser.records.metrics import exact_match
    from laser.report.runs import load_runs
    from laser.report.tables import paired_difference

    runs = Path(__file__).resolve().parents[1] / "docs/testbed/seed0/runs"
    laser, vanilla = load_runs([runs / "laser", runs / "vanilla"])
    mean, (low, high), n = paired_difference(laser, vanilla)

    def correct(folder):
        lines = (runs / folder / "predictions.rank0.jsonl").read_text().splitlines()
        return [exact_match(r["prediction"], r["answers"]) for r in map(json.loads, lines)]

    assert n == len(correct("laser")) > 700
    assert paired_difference_ci(correct("laser"), correct("vanilla")) == (mean, low, high)


def test_processor_settings_of_the_testbed_tools_parse_numbers_and_name_a_bad_pair():
    import pytest
    from testbed_table import processor_settings

    assert processor_settings(["max_pixels=16384", "scale=0.5", "mode=fast"]) == {"max_pixels": 16384, "scale": 0.5,
                                                                                  "mode": "fast"}
    with pytest.raises(SystemExit, match="'max_pixels'"):
        processor_settings(["max_pixels"])
