"""`tools/gpu_check.py --smoke`: the GPU check's every step on tiny shapes on the CPU (the full run
needs a GPU): probe rows = eager rows, every preset without error records and batch = one by one, for
sdpa and eager, and `laser predict` with a device map."""

import gpu_check


def test_gpu_check_smoke_passes_every_check(tmp_path):
    out = tmp_path / "gpu.txt"
    code = gpu_check.main(["--smoke", "--out", str(out)])
    text = out.read_text()
    assert code == 0, text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| llava") or line.startswith("| qwen")]
    checks = {(r[0].strip("| "), r[1], r[2]) for r in rows}
    from laser.method.config import list_presets

    for model in ("llava", "qwen"):
        for kernel in ("sdpa", "eager"):
            assert (model, kernel, "rows = eager") in checks
            assert all((model, kernel, f"preset {p}") in checks for p in list_presets())
    assert ("llava", "sdpa", "device map (CPU)") in checks
    assert all(r[3] == "ok" for r in rows) and f"{len(rows)}/{len(rows)} checks passed" in text
