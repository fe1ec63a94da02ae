"""GPU check: LASER on random-weight models at the full width of LLaVA-1.5-7B and Qwen2-VL-7B, in bf16.

    python tools/gpu_check.py              # one GPU (an H200: under 8 minutes); writes docs/bench/gpu.txt
    python tools/gpu_check.py --smoke      # tiny shapes on the CPU in seconds (what tests/test_gpu_check.py runs)

The models are built with every weight created directly on the device (no host copy, no download):
LLaVA-1.5-7B (CLIP ViT-L/14-336 tower, 32 x 4096 Llama, 576 visual tokens) and Qwen2-VL-7B (32-block
1280-wide tower, 28 x 3584 Qwen2 with 4 KV heads, a 1288 px image: 2,116 visual tokens), with the
projects' own builders (tools/bench.py) at the real sizes. For each model and for each of the `sdpa` and
`eager` kernels it checks, on a left-padded batch of two samples:

- rows:   the probe's attention rows equal eager `output_attentions` rows (to a bf16 tolerance);
- presets: every method preset runs end to end through `LaserModule.predict_step` with no error record;
- batch:  each preset's batch records equal the records of each sample answered alone;

and once, `laser predict` itself on a saved LLaVA checkpoint with `model.device_map=auto` and a GPU
memory budget (`model.max_memory`) small enough that the last layers land on the CPU: one model split
over GPU + CPU, every sample answered, none an error. It prints a table and writes it (with the
environment) to `--out` (default docs/bench/gpu.txt on a GPU; nothing is written for `--smoke` unless
`--out` is given). Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {  # the real models' sizes
        "llava": {"layers": 32, "heads": 32, "kv_heads": 32, "hidden": 4096, "intermediate": 11008, "vocab": 32064,
                  "vision_layers": 24, "vision_hidden": 1024, "vision_intermediate": 4096, "vision_heads": 16,
                  "image_size": 336, "patch": 14},
        "qwen": {"layers": 28, "heads": 28, "kv_heads": 4, "hidden": 3584, "intermediate": 18944, "vocab": 152064,
                 "vision_depth": 32, "vision_embed": 1280, "vision_heads": 16, "patch": 14, "image_side": 1288},
    },
    "smoke": {
        "llava": {"layers": 2, "heads": 4, "kv_heads": 2, "hidden": 32, "intermediate": 64, "vocab": 256,
                  "vision_layers": 1, "vision_hidden": 32, "vision_intermediate": 64, "vision_heads": 2,
                  "image_size": 56, "patch": 14},
        "qwen": {"layers": 2, "heads": 4, "kv_heads": 2, "hidden": 32, "intermediate": 64, "vocab": 256,
                 "vision_depth": 1, "vision_embed": 32, "vision_heads": 2, "patch": 14, "image_side": 112},
    },
}
KERNELS = ("sdpa", "eager")
QUESTIONS = ("What is the color of the box on the left ?", "What is the color ?")  # different lengths: padding
NEW_TOKENS = {"full": 8, "smoke": 3}
ROW_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
SPLIT_GPU_BUDGET = "12GiB"  # of LLaVA-1.5-7B's 14.1 GB in bf16: the last layers and the LM head go to the CPU


# ----------------------------------------------------------------------------- models
@contextlib.contextmanager
def on_device(device: torch.device, dtype: torch.dtype):
    """Create every tensor (weights included) directly on `device` in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build(family: str, shape: dict[str, Any], device: torch.device, dtype: torch.dtype):
    from bench import build_llava, build_qwen

    with on_device(device, dtype):
        adapter = (build_llava if family == "llava" else build_qwen)(shape)
    adapter.model.eval().requires_grad_(False)
    return adapter


def images_for(family: str, shape: dict[str, Any]):
    from bench import make_image

    if family == "qwen":
        side = shape["image_side"]
        return [make_image(side, side, 1), make_image(side, side * 3 // 4, 2)]
    return [make_image(500, 300, 1), make_image(300, 420, 2)]


# ----------------------------------------------------------------------------- checks
def set_kernel(adapter, kernel: str) -> None:
    from laser.compat import set_attention_kernel

    set_attention_kernel(adapter.language_config(), kernel)


def check_rows(adapter, images, dtype) -> tuple[bool, str]:
    from eager_reference import eager_rows

    from laser.method.attention import capture_full
    from laser.method.probe import AttentionProbe

    inputs = adapter.build_inputs(images, list(QUESTIONS))
    probe = AttentionProbe(adapter.attention_modules()).install()
    try:
        with torch.no_grad():
            rows, valid, _ = capture_full(adapter, probe, inputs)
    finally:
        probe.remove()
    reference = eager_rows(adapter, inputs)
    diff = (rows.float().cpu() - reference).abs()
    tolerance = ROW_TOLERANCE[dtype]
    ok = rows.shape == reference.shape and bool(diff.max() <= tolerance) and rows.device == adapter.device
    return ok, (
        f"max |probe - eager| {float(diff.max()):.1e} (mean {float(diff.mean()):.1e}, tolerance {tolerance:g}) over "
        f"{tuple(rows.shape)}; rows on {rows.device}"
    )


def _comparable(record: dict[str, Any]) -> tuple:
    return record["prediction"], record["layer"], record["box"], record["path"], record["error"]


def check_presets(adapter, images, new_tokens: int) -> list[tuple[str, bool, str, float]]:
    """(preset, ok, detail, seconds) per preset: no error record in the batch, batch = one by one."""
    from laser.method.config import LaserConfig, list_presets
    from laser.method.engine import LaserEngine
    from laser.run.lightning import LaserModule

    samples = [
        {"sample_id": f"s{i}", "image": image, "question": question, "answers": ["x"]}
        for i, (image, question) in enumerate(zip(images, QUESTIONS))
    ]
    out = []
    for preset in list_presets():
        config = LaserConfig.preset(preset, **{"decode.max_new_tokens": new_tokens})
        engine = LaserEngine(adapter, config)
        module = LaserModule(model="in memory", engine=engine, seed=0)
        start = time.perf_counter()
        try:
            with torch.no_grad():
                batch = module.predict_step(samples)
                alone = [module.predict_step([s])[0] for s in samples]
        finally:
            engine.probe.remove()
        errors = [r["error"] for r in batch + alone if r["error"] is not None]
        equal = [_comparable(b) == _comparable(a) for b, a in zip(batch, alone)]
        ok = not errors and all(equal)
        detail = f"errors {len(errors)}; batch = one by one {sum(equal)}/{len(equal)}; paths {[r['path'] for r in batch]}"
        if errors:
            detail += f"; first error: {errors[0][:200]}"
        out.append((preset, ok, detail, time.perf_counter() - start))
    return out


def check_split(adapter, images, workdir: Path, device: torch.device, dtype: torch.dtype, new_tokens: int):
    """`laser predict` on the saved model with `model.device_map=auto` and a GPU budget that leaves the
    last layers on the CPU (on a CPU-only machine: the whole map on the CPU)."""
    import laser.adapters

    from laser.cli import main as laser_main
    from laser.records.files import merge_records

    folder = workdir / "llava"
    adapter.model.save_pretrained(folder)
    adapter.processor.save_pretrained(folder)
    data = workdir / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, question) in enumerate(zip(images, QUESTIONS)):
        image.save(data / "images" / f"{i}.png")
        lines.append(json.dumps({"sample_id": f"s{i}", "image": f"images/{i}.png", "question": question, "answers": ["x"]}))
    (data / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    budget = f"{{0: {SPLIT_GPU_BUDGET}, cpu: 200GiB}}" if device.type == "cuda" else "{cpu: 200GiB}"
    loaded = []
    real = laser.adapters.create_adapter

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    laser.adapters.create_adapter = spy
    try:
        code = laser_main([
            "predict", f"model={folder}", "model.adapter=llava", "model.device_map=auto", f"model.max_memory={budget}",
            f"model.dtype={str(dtype).removeprefix('torch.')}", "data=jsonl", f"data.annotations={data / 'annotations.jsonl'}",
            f"data.image_root={data}", "data.batch_size=2", "method=laser", f"method.decode.max_new_tokens={new_tokens}",
            f"output_dir={workdir / 'run'}", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "trainer.devices=1", "trainer.enable_progress_bar=false",
        ])
    finally:
        laser.adapters.create_adapter = real
    records, report = merge_records(workdir / "run", [f"s{i}" for i in range(len(images))])
    placed: dict[str, int] = {}
    if loaded:
        device_map = getattr(loaded[0].model, "hf_device_map", None) or {"": str(loaded[0].device)}
        for where in device_map.values():
            placed[str(where)] = placed.get(str(where), 0) + 1
    loaded.clear()
    split = device.type != "cuda" or len(placed) > 1
    ok = code == 0 and not report["missing"] and report["errors"] == 0 and split
    detail = (
        f"exit {code}; {len(records)}/{len(images)} answered, {report['errors']} errors; "
        f"modules per device {placed or 'unknown'}"
    )
    return ok, detail


# ----------------------------------------------------------------------------- run
def run(mode: str, device: torch.device, dtype: torch.dtype, families: list[str], split: bool) -> tuple[list, dict]:
    rows: list[tuple[str, str, str, bool, str, float]] = []  # model, kernel, check, ok, detail, seconds
    start = time.perf_counter()
    for family in families:
        shape = SHAPES[mode][family]
        t0 = time.perf_counter()
        adapter = build(family, shape, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        params = sum(p.numel() for p in adapter.model.parameters())
        size = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
        rows.append((family, "-", "build", True, f"{size} parameters on {adapter.device}, {adapter.dtype}",
                     time.perf_counter() - t0))
        images = images_for(family, shape)
        for kernel in KERNELS:
            set_kernel(adapter, kernel)
            t0 = time.perf_counter()
            ok, detail = check_rows(adapter, images, dtype)
            rows.append((family, kernel, "rows = eager", ok, detail, time.perf_counter() - t0))
            for preset, ok, detail, seconds in check_presets(adapter, images, NEW_TOKENS[mode]):
                rows.append((family, kernel, f"preset {preset}", ok, detail, seconds))
        set_kernel(adapter, "sdpa")
        if split and family == "llava":
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as workdir:
                ok, detail = check_split(adapter, images, Path(workdir), device, dtype, NEW_TOKENS[mode])
            rows.append((family, "sdpa", "device map GPU + CPU" if device.type == "cuda" else "device map (CPU)",
                         ok, detail, time.perf_counter() - t0))
        del adapter
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    info = {
        "mode": mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
    }
    return rows, info


def table(rows, info) -> str:
    import transformers

    passed = sum(r[3] for r in rows)
    lines = [
        f"LASER GPU check ({info['mode']}): {info['device']}, {info['dtype']}, torch {info['torch']}, "
        f"transformers {transformers.__version__}; {info['seconds']} s"
        + (f", peak GPU memory {info['peak_gpu_gib']} GiB" if info["peak_gpu_gib"] is not None else ""),
        f"{passed}/{len(rows)} checks passed",
        "",
        "| model | kernel | check | result | seconds | detail |",
        "|---|---|---|---|---:|---|",
    ]
    for model, kernel, check, ok, detail, seconds in rows:
        lines.append(f"| {model} | {kernel} | {check} | {'ok' if ok else 'FAIL'} | {seconds:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, in seconds, on the CPU unless --device")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--models", default="llava,qwen")
    parser.add_argument("--no-split", action="store_true", help="skip the device-map run")
    parser.add_argument("--out", default=None, help="default: docs/bench/gpu.txt for a full run on a GPU")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    mode = "smoke" if args.smoke else "full"
    if mode == "full" and device.type != "cuda":
        print("gpu_check: no GPU here; the full-width run needs one (use --smoke for the CPU)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rows, info = run(mode, device, dtype, args.models.split(","), not args.no_split)
    text = table(rows, info)
    print(text)
    out = args.out or (str(ROOT / "docs" / "bench" / "gpu.txt") if mode == "full" else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
