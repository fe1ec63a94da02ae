"""LASER performance bench: attention capture, end to end, the cost floor, batch throughput and the
engine's memory at a 72B attention shape.

    python tools/bench.py [--quick] [--out bench.json | --out DIR/] [--threads N]
    python tools/bench.py --device cuda --dtype bfloat16 --out docs/bench/   # -> docs/bench/gpu.{txt,json}

Builds random-weight models of real shapes (layers, heads and visual token counts of LLaVA-1.5-7B and
of Qwen2-VL-7B at high resolution; hidden/intermediate sizes, vision-tower depth and width narrowed
to fit a CPU; what was narrowed is printed and written), runs every compared variant interleaved in
one process (medians over repeats), prints a table and writes JSON. No weights are downloaded.

Times and memory come from two processes. Times: this process, with the allocator as users have it.
Memory: a child process (`--phase memory`, one round) runs with `MALLOC_MMAP_THRESHOLD_` fixed, so
large buffers come from mmap and go back to the OS when freed and peak RSS above the pre-call RSS is a
faithful per-call peak (the kernel's peak counter, VmHWM, is reset through /proc/self/clear_refs before
each measured call). Timing under that setting would be wrong: every buffer over the threshold is
page-faulted afresh, which taxes big batches most. On a GPU, `torch.cuda.max_memory_allocated` deltas
are reported as well.

On CUDA (`--device cuda`) the LLaVA model is full width (LLaVA-1.5-7B's real sizes, random weights, in
`--dtype`), times are wall seconds, memory is the CUDA peak measured in-process, and the batch section
compares batch 8 with batch 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools"):  # the checkout's `laser`; `tiny_lvlm` when loaded from elsewhere
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

MMAP_THRESHOLD = 1 << 20
NEVER_EOS = -1  # answers never stop early: every method decodes exactly `new_tokens` tokens
QUESTION = "What is the color of the box on the left ?"
GENERIC = "Write a general description of the image."

# ----------------------------------------------------------------------------- shapes
# real: the published model's numbers; the bench keeps layers, heads, kv heads, vocab, image
# geometry and so the visual token counts; it narrows hidden/intermediate sizes and the vision tower.
LLAVA_REAL = {
    "model": "llava-hf/llava-1.5-7b-hf",
    "text": {"layers": 32, "heads": 32, "kv_heads": 32, "hidden": 4096, "intermediate": 11008, "vocab": 32064},
    "vision": {"tower": "CLIP ViT-L/14-336", "image_size": 336, "patch": 14, "layers": 24, "hidden": 1024,
               "intermediate": 4096, "heads": 16},
    "visual_tokens": 576,
}
QWEN_REAL = {
    "model": "Qwen/Qwen2-VL-7B-Instruct",
    "text": {"layers": 28, "heads": 28, "kv_heads": 4, "hidden": 3584, "intermediate": 18944, "vocab": 152064},
    "vision": {"patch": 14, "merge": 2, "depth": 32, "embed_dim": 1280, "heads": 16},
}
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "llava": {"layers": 32, "heads": 32, "kv_heads": 32, "hidden": 256, "intermediate": 688, "vocab": 32064,
                  "vision_layers": 2, "vision_hidden": 128, "vision_intermediate": 512, "vision_heads": 16,
                  "image_size": 336, "patch": 14},
        "qwen": {"layers": 28, "heads": 28, "kv_heads": 4, "hidden": 224, "intermediate": 1184, "vocab": 152064,
                 "vision_depth": 1, "vision_embed": 64, "vision_heads": 2, "patch": 14, "image_side": 1288},
    },
    "quick": {
        "llava": {"layers": 4, "heads": 32, "kv_heads": 32, "hidden": 256, "intermediate": 688, "vocab": 32064,
                  "vision_layers": 2, "vision_hidden": 128, "vision_intermediate": 512, "vision_heads": 16,
                  "image_size": 336, "patch": 14},
        "qwen": {"layers": 4, "heads": 28, "kv_heads": 4, "hidden": 224, "intermediate": 1184, "vocab": 152064,
                 "vision_depth": 1, "vision_embed": 64, "vision_heads": 2, "patch": 14, "image_side": 448},
    },
    "tiny": {
        "llava": {"layers": 2, "heads": 4, "kv_heads": 2, "hidden": 32, "intermediate": 64, "vocab": 256,
                  "vision_layers": 2, "vision_hidden": 32, "vision_intermediate": 64, "vision_heads": 2,
                  "image_size": 56, "patch": 14},
        "qwen": {"layers": 2, "heads": 4, "kv_heads": 2, "hidden": 32, "intermediate": 64, "vocab": 256,
                 "vision_depth": 1, "vision_embed": 32, "vision_heads": 2, "patch": 14, "image_side": 112},
    },
}
SHAPES["gpu"] = {
    "llava": {"layers": 32, "heads": 32, "kv_heads": 32, "hidden": 4096, "intermediate": 11008, "vocab": 32064,
              "vision_layers": 24, "vision_hidden": 1024, "vision_intermediate": 4096, "vision_heads": 16,
              "image_size": 336, "patch": 14},
    "qwen": SHAPES["default"]["qwen"],
}
# The attention of a 72B model (Qwen2-VL-72B: 80 layers, 64 heads, 8 KV heads) over 16k visual tokens;
# head_dim narrowed (only the probe's per-layer rows and the engine's buffers are measured, no model).
SHAPE_72B = {"layers": 80, "heads": 64, "kv_heads": 8, "head_dim": 16, "n_visual": 16384, "text_tokens": 64}
MEMORY_SHAPES = {
    "default": SHAPE_72B, "gpu": SHAPE_72B, "quick": {**SHAPE_72B, "n_visual": 1024},
    "tiny": {"layers": 4, "heads": 8, "kv_heads": 2, "head_dim": 8, "n_visual": 256, "text_tokens": 16},
}
PLANS = {
    # repeats per section, batch sizes, answer length
    "default": {"repeats": 5, "qwen_repeats": 1, "batch_repeats": 2, "batches": [1, 4, 8], "new_tokens": 8},
    "quick": {"repeats": 1, "qwen_repeats": 1, "batch_repeats": 1, "batches": [1, 4], "new_tokens": 8},
    "tiny": {"repeats": 1, "qwen_repeats": 1, "batch_repeats": 1, "batches": [1, 2], "new_tokens": 3},
    "gpu": {"repeats": 5, "qwen_repeats": 3, "batch_repeats": 3, "batches": [1, 8], "new_tokens": 16},
}
MEMORY_72B_BATCH = {"cpu": 1, "cuda": 8}  # samples in the 72B-shape memory section (RAM on a shared CPU)


DEVICE = torch.device("cpu")  # set by `run`
DTYPE = torch.float32


def _instantiate(cls, config):
    """A random-weight model built directly on DEVICE in DTYPE (7B in float32 on the host would not fit)."""
    with torch.device(DEVICE):
        return cls._from_config(config, dtype=DTYPE).eval()


def _never_stop(adapter):
    adapter.eos_token_ids = lambda: [NEVER_EOS]
    return adapter


def build_llava(s: dict[str, Any]):
    """LLaVA-1.5-shaped `LlavaForConditionalGeneration` (CLIP tower shape, 336 px -> 576 tokens)."""
    from laser.adapters.llava import LlavaAdapter
    from tiny_lvlm import llava_config, llava_processor, word_tokenizer
    from transformers import LlavaForConditionalGeneration

    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = llava_config(
        tokenizer, image_size=s["image_size"], patch_size=s["patch"], vision_hidden=s["vision_hidden"],
        vision_intermediate=s["vision_intermediate"], vision_layers=s["vision_layers"],
        vision_heads=s["vision_heads"], text_hidden=s["hidden"], text_intermediate=s["intermediate"],
        text_layers=s["layers"], heads=s["heads"], kv_heads=s["kv_heads"],
        vocab_size=max(s["vocab"], len(tokenizer)),
    )
    model = _instantiate(LlavaForConditionalGeneration, config)
    return _never_stop(LlavaAdapter(model, llava_processor(tokenizer, s["image_size"], s["patch"])))


def build_qwen(s: dict[str, Any]):
    """Qwen2-VL-shaped `Qwen2VLForConditionalGeneration` (patch 14, merge 2, dynamic resolution)."""
    from laser.adapters.qwen_vl import Qwen2VLAdapter
    from tiny_lvlm import word_tokenizer
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    special = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>", "<|endoftext|>")
    tokenizer = word_tokenizer(extra_special=special)
    tokenizer.eos_token = "<|im_end|>"
    ids = tokenizer.convert_tokens_to_ids
    head_dim = s["hidden"] // s["heads"]
    quarter = head_dim // 2
    mrope = [quarter - 2 * (quarter * 3 // 8), quarter * 3 // 8, quarter * 3 // 8]  # [16, 24, 24] at 128
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=s["vision_depth"], embed_dim=s["vision_embed"], hidden_size=s["hidden"], num_heads=s["vision_heads"],
            mlp_ratio=4, patch_size=s["patch"], spatial_merge_size=2, temporal_patch_size=2,
        ),
        text_config=Qwen2VLTextConfig(
            vocab_size=max(s["vocab"], len(tokenizer)), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
            num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    model = _instantiate(Qwen2VLForConditionalGeneration, config)
    factor = s["patch"] * 2
    common = {"patch_size": s["patch"], "merge_size": 2, "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 4 * factor * factor, "longest_edge": 16384 * factor * factor}, **common
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(**common)
    )
    return _never_stop(Qwen2VLAdapter(model, processor))


def narrowing(shape: dict[str, Any], real: dict[str, Any], family: str) -> dict[str, Any]:
    """What the bench model keeps and what it narrows, against the real model."""
    text = real["text"]
    kept = {k: shape[k] for k in ("layers", "heads", "kv_heads", "vocab")}
    narrowed = {
        "hidden": f"{text['hidden']} -> {shape['hidden']} (head_dim {text['hidden'] // text['heads']} -> "
                  f"{shape['hidden'] // shape['heads']})",
        "intermediate": f"{text['intermediate']} -> {shape['intermediate']}",
    }
    if family == "llava":
        v = real["vision"]
        narrowed["vision_tower"] = (
            f"{v['layers']} layers x {v['hidden']} wide -> {shape['vision_layers']} x {shape['vision_hidden']} "
            f"(image {shape['image_size']} px, patch {shape['patch']} kept)"
        )
    else:
        v = real["vision"]
        narrowed["vision_tower"] = (
            f"depth {v['depth']} x {v['embed_dim']} -> {shape['vision_depth']} x {shape['vision_embed']} "
            f"(patch {shape['patch']}, merge 2 kept)"
        )
    for k in ("layers", "heads", "kv_heads", "vocab"):
        if shape[k] != text[k]:
            narrowed[k] = f"{text[k]} -> {shape[k]}"
            kept.pop(k)
    return {"real": real["model"], "kept": kept, "narrowed": narrowed}


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = x0 + int(rng.integers(4, max(5, width // 4))), y0 + int(rng.integers(4, max(5, height // 4)))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


# ----------------------------------------------------------------------------- measuring
PHASE = "all"  # "time": no memory meters; "memory": one round, memory meters; "all": both in one process


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak RSS (and CUDA peak) of one call above what was resident before it, in MiB."""

    def __init__(self) -> None:
        self.rss_before = self.peak_delta_mib = self.peak_total_mib = self.cuda_delta_mib = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.rss_before = _status_kb("VmRSS")
        self.reset_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.reset_ok = True
        except OSError:
            pass
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda0 = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = _status_kb("VmHWM")
        if self.reset_ok and hwm is not None and self.rss_before is not None:
            self.peak_delta_mib = round(max(0, hwm - self.rss_before) / 1024, 1)
            self.peak_total_mib = round(hwm / 1024, 1)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
            self.cuda_delta_mib = round((torch.cuda.max_memory_allocated() - self._cuda0) / 2**20, 1)

    def as_dict(self) -> dict[str, Any]:
        out = {"peak_rss_delta_mib": self.peak_delta_mib, "peak_rss_total_mib": self.peak_total_mib}
        if self.cuda_delta_mib is not None:
            out["cuda_peak_delta_mib"] = self.cuda_delta_mib
        return out


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, memory: bool = True, caps: dict[str, int] | None = None
) -> dict[str, dict]:
    """Run every variant once per round, `repeats` rounds (a variant in `caps` only in its first
    caps[name] rounds); memory measured on the first round.

    `median_s` is the median of process CPU seconds on a CPU run (robust on a shared machine: the
    bench pins torch to its threads, so CPU time is the work done) and of wall seconds on a GPU;
    both are kept (`cpu_s`, `wall_s`)."""
    memory = memory and PHASE != "time"
    if PHASE == "memory":
        repeats = 1
    times: dict[str, list[float]] = {name: [] for name in variants}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    mem: dict[str, dict] = {}
    extra: dict[str, Any] = {}
    caps = caps or {}
    for round_ in range(repeats):
        for name, fn in variants.items():
            if round_ >= caps.get(name, repeats):
                continue
            meter = PeakMemory() if memory and round_ == 0 else contextlib.nullcontext()
            with meter:
                _sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                result = fn()
                _sync()
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                walls[name].append(wall)
                times[name].append(wall if DEVICE.type == "cuda" else cpu)
                if isinstance(result, dict) and round_ == 0:
                    extra[name] = result
                del result
            if isinstance(meter, PeakMemory):
                mem[name] = meter.as_dict()
    out = {}
    for name in variants:
        out[name] = {
            "median_s": round(statistics.median(times[name]), 4),
            "times_s": [round(t, 4) for t in times[name]],
            "wall_s": [round(t, 4) for t in walls[name]],
        }
        out[name].update(mem.get(name, {}))
        if name in extra:
            out[name].update(extra[name])
    return out


# ----------------------------------------------------------------------------- helpers on the model
@contextlib.contextmanager
def attention_impl(model: torch.nn.Module, impl: str):
    """Every config in the model on `impl` (e.g. eager), restored afterwards."""
    from transformers import PretrainedConfig

    from laser.compat import attention_kernel, set_attention_kernel

    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            configs[id(config)] = (config, attention_kernel(config))
    for config, _ in configs.values():
        set_attention_kernel(config, impl)
    try:
        yield
    finally:
        for config, original in configs.values():
            set_attention_kernel(config, original)


def model_inputs(adapter, images, questions, with_question: bool = True) -> dict[str, Any]:
    from laser.method.attention import model_tensors

    return adapter.prepare_model_inputs(model_tensors(adapter.build_inputs(images, questions, with_question=with_question)))


def greedy(adapter, inputs: dict[str, Any], new_tokens: int, contrastive: bool = False) -> list[int]:
    """Minimal decode: one prefill (last-position logits only) and `new_tokens - 1` cached steps."""
    from laser.compat import cache_kwarg, output_cache
    from laser.method.decoding import vat_scores

    model = adapter.model
    mask = inputs["attention_mask"]
    extra = {}
    pos = adapter.position_ids(mask)
    if pos is not None:
        extra["position_ids"] = pos
    out = model(**inputs, **extra, use_cache=True, logits_to_keep=1)
    kw = cache_kwarg(model)
    tokens_out = []
    for step in range(new_tokens):
        z = out.logits[:, -1]
        if contrastive:
            half = z.shape[0] // 2
            tok = vat_scores(z[:half], z[half:], 1.0).argmax(-1)
            tok = torch.cat([tok, tok])
        else:
            tok = z.argmax(-1)
        tokens_out.append(int(tok[0]))
        if step == new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step_in = {"input_ids": tok[:, None], "attention_mask": mask, kw: output_cache(out)}
        pos = adapter.position_ids(mask, mask.shape[1] - 1)
        if pos is not None:
            step_in["position_ids"] = pos
        out = model(**step_in, use_cache=True, logits_to_keep=1)
    return tokens_out


# ----------------------------------------------------------------------------- 1. attention capture
def attention_capture(adapter, image: Image.Image, repeats: int, run_eager: bool | None = None) -> dict[str, Any]:
    """Plain sdpa prefill vs the probe vs eager `output_attentions=True` on one with-question prompt."""
    from laser.method.attention import capture_full, forward_last_position, model_tensors
    from laser.method.probe import AttentionProbe

    inputs = adapter.build_inputs([image], [QUESTION])
    tensors = adapter.prepare_model_inputs(model_tensors(inputs))
    layout = adapter.visual_layout(inputs, 0)
    n_visual, seq = layout.n_visual, int(inputs["input_ids"].shape[1])
    layers, heads = adapter.num_layers, adapter.num_heads
    itemsize = torch.finfo(adapter.dtype).bits // 8
    probe_bytes = layers * heads * n_visual * 4  # float32 rows
    eager_bytes = layers * heads * seq * seq * itemsize
    probe = AttentionProbe(adapter.attention_modules())

    def plain():
        probe.remove()
        forward_last_position(adapter, tensors, use_cache=False)

    def probed():
        probe.install()
        rows, _, _ = capture_full(adapter, probe, inputs)
        probe.remove()
        return {"kept_bytes": rows.numel() * rows.element_size()}

    def eager():
        probe.remove()
        with attention_impl(adapter.model, "eager"):
            out = adapter.model(**tensors, output_attentions=True, use_cache=False)
        attn = [a for a in out.attentions if a is not None]
        return {"kept_bytes": sum(a.numel() * a.element_size() for a in attn)}

    if run_eager is None:
        run_eager = eager_bytes < 10e9
    variants = {"sdpa": plain, "probe": probed}
    if run_eager:
        variants["eager_output_attentions"] = eager
    results = interleaved(variants, repeats, caps={"eager_output_attentions": 1})
    out = {
        "seq_len": seq, "n_visual": n_visual, "layers": layers, "heads": heads,
        "probe_attention_bytes": probe_bytes, "eager_attention_bytes": eager_bytes,
        "eager_needs_gb": round(eager_bytes / 1e9, 2), "eager_run": run_eager,
        "attention_memory_ratio": round(eager_bytes / probe_bytes, 1),
        "variants": results,
        "probe_overhead": round(results["probe"]["median_s"] / results["sdpa"]["median_s"] - 1, 4),
    }
    if run_eager:
        out["eager_vs_sdpa"] = round(results["eager_output_attentions"]["median_s"] / results["sdpa"]["median_s"], 3)
    return out


# ----------------------------------------------------------------------------- 2. end to end
def reference_pipeline(adapter, image: Image.Image, question: str, new_tokens: int) -> list[int]:
    """What ViCrop's research code does: eager attention, `output_attentions=True` over all layers on
    two full prefills (question, generic prompt), rel-att a+/a0 at a fixed layer, multi-scale crop,
    then HF `generate` on original + crop."""
    from laser.method.attention import model_tensors
    from laser.method.canvas import cell_masses, placed_layout
    from laser.method.crop import place_multiscale_crop, search_grid

    model = adapter.model
    layer = min(adapter.default_layer, adapter.num_layers - 1)
    with attention_impl(model, "eager"):
        inputs_q = adapter.build_inputs([image], [question])
        out_q = model(**adapter.prepare_model_inputs(model_tensors(inputs_q)), output_attentions=True)
        inputs_g = adapter.build_inputs([image], [GENERIC])
        out_g = model(**adapter.prepare_model_inputs(model_tensors(inputs_g)), output_attentions=True)
        pos_q = adapter.visual_layout(inputs_q, 0).positions
        pos_g = adapter.visual_layout(inputs_g, 0).positions
        a_q = out_q.attentions[layer][0, :, -1, pos_q].mean(0)
        a_g = out_g.attentions[layer][0, :, -1, pos_g].mean(0)
        del out_q, out_g
        ratio = a_q / a_g
        layout = placed_layout(adapter.visual_layout(inputs_q, 0), stretch=True)  # grid over the whole image
        cells = cell_masses(ratio, layout, 0, search_grid([layout], image.size))
        box = place_multiscale_crop(cells, image.size, adapter.native_resolution, [1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
        crop = image.crop(box)
        inputs_f = adapter.build_inputs([[image, crop]], [question])
        ids = model.generate(
            **adapter.prepare_model_inputs(model_tensors(inputs_f)), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=adapter.tokenizer.pad_token_id,
        )
    return ids[0, inputs_f["input_ids"].shape[1]:].tolist()


def engines(adapter, new_tokens: int) -> dict[str, Any]:
    from laser import LaserConfig, LaserEngine

    common = {"decode.max_new_tokens": new_tokens}
    return {
        "vanilla": LaserEngine(adapter, LaserConfig.preset("vanilla", **common)),
        "laser": LaserEngine(adapter, LaserConfig.preset("laser", **common, **{"gate.depth": 1.5})),
        "laser_full": LaserEngine(adapter, LaserConfig.preset("laser_full", **common)),
    }


def end_to_end(adapter, image: Image.Image, repeats: int, new_tokens: int, engs: dict[str, Any]) -> dict[str, Any]:
    def run(engine):
        def fn():
            pred = engine.answer(image, QUESTION)
            assert len(pred.token_ids) == new_tokens, pred.token_ids
            return {"path": pred.path, "stages_s": {k: round(v, 4) for k, v in pred.timings.items()}}
        return fn

    def reference():
        ids = reference_pipeline(adapter, image, QUESTION, new_tokens)
        assert len(ids) == new_tokens
        return {"path": "reference"}

    variants = {name: run(engine) for name, engine in engs.items()}
    variants["reference"] = reference
    results = interleaved(variants, repeats, caps={"reference": 1})  # 10x the others: one run
    t = {k: v["median_s"] for k, v in results.items()}
    ratios = {
        "laser_over_vanilla": round(t["laser"] / t["vanilla"], 3),
        "laser_full_over_vanilla": round(t["laser_full"] / t["vanilla"], 3),
        "laser_over_reference": round(t["laser"] / t["reference"], 3),
        "laser_full_over_reference": round(t["laser_full"] / t["reference"], 3),
    }
    ratios.update(memory_ratios(results))
    return {"new_tokens": new_tokens, "variants": results, "ratios": ratios}


def memory_ratios(variants: dict[str, dict]) -> dict[str, float]:
    """Peak RSS above the resident model, laser and laser_full over vanilla (empty without memory)."""
    mem = {k: v.get("peak_rss_delta_mib") for k, v in variants.items()}
    if not mem.get("vanilla"):
        return {}
    return {
        "laser_peak_mem_over_vanilla": round(mem["laser"] / mem["vanilla"], 3),
        "laser_full_peak_mem_over_vanilla": round(mem["laser_full"] / mem["vanilla"], 3),
    }


# ----------------------------------------------------------------------------- 3. cost floor
def cost_floor(adapter, image: Image.Image, repeats: int, new_tokens: int) -> dict[str, Any]:
    """The separate minimal forwards the method needs, each timed alone (probe off)."""
    from laser.compat import cache_kwarg, output_cache
    from laser.method.attention import common_prefix_length, forward_last_position, model_tensors
    from laser.method.probe import AttentionProbe

    probe = AttentionProbe(adapter.attention_modules())
    probe.remove()
    model = adapter.model
    inputs_q = adapter.build_inputs([image], [QUESTION])
    inputs_0 = adapter.build_inputs([image], [QUESTION], with_question=False)
    full_q = adapter.prepare_model_inputs(model_tensors(inputs_q))
    ids_q, ids_0 = inputs_q["input_ids"][0], inputs_0["input_ids"][0]
    shared = common_prefix_length(ids_q, ids_0)
    prefix = dict(full_q)
    prefix.update(input_ids=full_q["input_ids"][:, :shared], attention_mask=full_q["attention_mask"][:, :shared])
    prefix = adapter.prepare_model_inputs(prefix)
    cache = output_cache(forward_last_position(adapter, prefix, use_cache=True))
    suffix_ids = ids_0[shared:][None].to(DEVICE)
    suffix_mask = torch.ones(1, shared + suffix_ids.shape[1], dtype=torch.long, device=DEVICE)
    w, h = image.size
    crop = image.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2))
    focus = model_inputs(adapter, [crop], [QUESTION])
    focus2 = model_inputs(adapter, [crop, crop], [QUESTION, QUESTION])

    def full_prefill():
        forward_last_position(adapter, full_q, use_cache=True)

    def suffix_prefill():
        step = {"input_ids": suffix_ids, "attention_mask": suffix_mask, cache_kwarg(model): cache}
        pos = adapter.position_ids(suffix_mask, shared)
        if pos is not None:
            step["position_ids"] = pos
        model(**step, use_cache=True, logits_to_keep=1)
        cache.crop(-int(suffix_ids.shape[1]))  # back to the prefix, ready for the next round

    def focus_direct():
        greedy(adapter, focus, new_tokens)

    def focus_contrastive():
        greedy(adapter, focus2, new_tokens, contrastive=True)

    variants = {
        "full_prefill_q": full_prefill,
        "suffix_prefill_0": suffix_prefill,
        "focus_prefill_decode": focus_direct,
        "focus_prefill_decode_2B": focus_contrastive,
    }
    results = interleaved(variants, repeats, memory=False)
    t = {k: v["median_s"] for k, v in results.items()}
    floor_direct = t["full_prefill_q"] + t["suffix_prefill_0"] + t["focus_prefill_decode"]
    floor_contrastive = t["full_prefill_q"] + t["suffix_prefill_0"] + t["focus_prefill_decode_2B"]
    return {
        "shared_prefix_tokens": shared, "suffix_tokens": int(suffix_ids.shape[1]),
        "pieces": results, "floor_direct_s": round(floor_direct, 4),
        "floor_contrastive_s": round(floor_contrastive, 4), "floor_vanilla_s": t["focus_prefill_decode"],
    }


# ----------------------------------------------------------------------------- 4. batch throughput
def batch_throughput(engine, batches: list[int], repeats: int, image_size: tuple[int, int]) -> dict[str, Any]:
    images = [make_image(*image_size, seed=10 + i) for i in range(max(batches))]
    questions = [QUESTION] * max(batches)
    variants = {f"batch_{b}": (lambda b=b: engine.answer_batch(images[:b], questions[:b]) and None) for b in batches}
    results = interleaved(variants, repeats, memory=False)
    out = {}
    for b in batches:
        r = results[f"batch_{b}"]
        out[f"batch_{b}"] = {**r, "samples_per_s": round(b / r["median_s"], 4)}
    base = out[f"batch_{batches[0]}"]["samples_per_s"]
    for b in batches:
        out[f"batch_{b}"]["throughput_vs_batch_1"] = round(out[f"batch_{b}"]["samples_per_s"] / base, 3)
    return out


# ----------------------------------------------------------------------------- 5. memory at a 72B attention shape
def _localising_engine(num_layers: int):
    """A `LaserEngine` for `_localise` alone: the laser preset, no model (the section measures the
    engine's own buffers)."""
    from types import SimpleNamespace

    from laser import LaserConfig, LaserEngine

    engine = object.__new__(LaserEngine)
    engine.config = LaserConfig.preset("laser")
    engine.adapter = SimpleNamespace(num_layers=num_layers, default_layer=14, reference_num_layers=32, native_resolution=448)
    return engine


def _capture_rows(shape: dict[str, Any], batch: int, positions: torch.Tensor, seed: int) -> torch.Tensor:
    """The probe's rows for one prompt: every layer's last-row attention computed by the probe's own
    kernel (`last_row_attention`) from random queries and keys, recorded by `AttentionCapture`."""
    from laser.method.probe import AttentionCapture, last_row_attention

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    length = shape["n_visual"] + shape["text_tokens"]
    capture = AttentionCapture(positions, shape["layers"], None)
    for layer in range(shape["layers"]):
        query = torch.randn(batch, shape["heads"], 1, shape["head_dim"], device=DEVICE, dtype=DTYPE, generator=generator)
        key = torch.randn(batch, shape["kv_heads"], length, shape["head_dim"], device=DEVICE, dtype=DTYPE, generator=generator)
        capture.record(layer, last_row_attention(query, key, None, shape["head_dim"] ** -0.5))
        del query, key
    return capture.result()


def _whole_tensor_localise(rows) -> torch.Tensor:
    """The localisation before issue 14, for comparison: c for every layer at once (several float32
    copies of [batch, layers, heads, n_visual])."""
    from laser.method import vaq as vaq_ops

    c = vaq_ops.contrastive_map(rows.a_plus, rows.a_zero, "contrastive")
    c = c * rows.valid[:, None, None, :].to(c.device, c.dtype)
    finite = torch.isfinite(c).flatten(1).all(dim=1)
    c = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
    scores = vaq_ops.head_scores(c)
    layers = vaq_ops.select_layer(vaq_ops.layer_scores(scores, 8))
    maps = vaq_ops.localisation_map(c, layers, vaq_ops.top_heads(scores, 8))
    return maps.sum() + finite.sum()


def attention_memory_72b(shape: dict[str, Any], batch: int) -> dict[str, Any]:
    """Peak memory of the engine's attention and localisation stages at a 72B attention shape, beyond
    what was resident before (the model, absent here), against the probe rows it keeps (a+ and a0).

    The rows are made by the probe's kernel and capture class per layer, as in a real prefill (random
    queries and keys, narrowed head_dim), then `LaserEngine._localise` runs on them."""
    from laser.adapters.base import VisualLayout, VisualSegment

    from laser.method.attention import AttentionRows

    n, side = shape["n_visual"], int(round(shape["n_visual"] ** 0.5))
    layout = VisualLayout([VisualSegment(0, torch.arange(n), (side, side), (0.0, 0.0, 1.0, 1.0))], [(1792, 1792)])
    positions = torch.arange(n).expand(batch, n)
    images = [Image.new("RGB", (1792, 1792))] * batch
    engine = _localising_engine(shape["layers"])
    rows_bytes = 2 * batch * shape["layers"] * shape["heads"] * n * 4
    held: dict[str, Any] = {}

    def capture():
        a_plus = _capture_rows(shape, batch, positions, seed=0)
        a_zero = _capture_rows(shape, batch, positions, seed=1)
        held["rows"] = AttentionRows(a_plus, a_zero, torch.ones(batch, n, dtype=torch.bool, device=DEVICE),
                                     [layout] * batch, prefix_reused=True)

    def localise():
        engine._localise(held["rows"], images)

    def whole_tensor_localise():
        _whole_tensor_localise(held["rows"])

    out: dict[str, Any] = {
        "shape": {**shape, "batch": batch}, "rows_kept_bytes": rows_bytes,
        "rows_kept_mib": round(rows_bytes / 2**20, 1), "variants": {},
    }
    for name, fn in (("capture_a_plus_a_zero", capture), ("localise", localise),
                     ("localise_whole_tensor_before", whole_tensor_localise)):
        meter = PeakMemory()
        with meter:
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            seconds = time.perf_counter() - start
        peak = meter.cuda_delta_mib if DEVICE.type == "cuda" else meter.peak_delta_mib
        if name != "capture_a_plus_a_zero" and peak is not None:
            peak += rows_bytes / 2**20  # the rows were resident before the call: count them in
        out["variants"][name] = {"wall_s": round(seconds, 3), "peak_mib": None if peak is None else round(peak, 1)}
    del held["rows"]
    peaks = [v["peak_mib"] for k, v in out["variants"].items() if k != "localise_whole_tensor_before"]
    if all(p is not None for p in peaks):
        out["engine_peak_mib"] = max(peaks)
        out["engine_peak_over_rows"] = round(max(peaks) / (rows_bytes / 2**20), 3)
        before = out["variants"]["localise_whole_tensor_before"]["peak_mib"]
        out["before_peak_over_rows"] = round(before / (rows_bytes / 2**20), 3)
    return out


# ----------------------------------------------------------------------------- driver
TARGETS = [
    ("probe adds <= 10% to sdpa prefill (LLaVA shape)", lambda r: r["attention_capture"]["llava"]["probe_overhead"], "<=", 0.10),
    ("attention memory eager/probe >= 100x (LLaVA shape)", lambda r: r["attention_capture"]["llava"]["attention_memory_ratio"], ">=", 100),
    ("laser/vanilla <= 2.2 (direct)", lambda r: r["end_to_end"]["ratios"]["laser_over_vanilla"], "<=", 2.2),
    ("laser_full/vanilla <= 3.2 (contrastive)", lambda r: r["end_to_end"]["ratios"]["laser_full_over_vanilla"], "<=", 3.2),
    ("laser/reference <= 0.6", lambda r: r["end_to_end"]["ratios"]["laser_over_reference"], "<=", 0.6),
    ("laser/floor - 1 <= 15% (direct)", lambda r: r["floor_ratios"]["laser_over_floor_direct"] - 1, "<=", 0.15),
    ("laser_full/floor - 1 <= 15% (contrastive)", lambda r: r["floor_ratios"]["laser_full_over_floor_contrastive"] - 1, "<=", 0.15),
    ("throughput batch 4 >= batch 1", lambda r: r["batch_throughput"].get("batch_4", {}).get("throughput_vs_batch_1"), ">=", 1.0),
    ("peak RSS delta laser/vanilla <= 1.25", lambda r: r["end_to_end"]["ratios"].get("laser_peak_mem_over_vanilla"), "<=", 1.25),
    ("engine peak memory <= 2x the probe rows it keeps (72B attention shape)",
     lambda r: r["attention_memory_72b"]["engine_peak_over_rows"], "<=", 2.0),
    ("throughput batch 8 >= 4x batch 1 (GPU)", lambda r: r["batch_throughput"]["batch_8"]["throughput_vs_batch_1"]
     if r["meta"]["device"] == "cuda" else None, ">=", 4.0),
]


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, get, op, bound in TARGETS:
        try:
            value = get(result)
        except (KeyError, TypeError):
            value = None
        ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append({"target": name, "value": None if value is None else round(value, 4), "bound": f"{op} {bound}", "met": ok})
    return out


def run(
    mode: str = "default", threads: int | None = None, log: Callable[[str], None] = print, phase: str = "all",
    device: str = "cpu", dtype: str = "float32",
) -> dict[str, Any]:
    """Every section in one process (`phase="all"`), or only times (`"time"`: no memory meters) or only
    memory (`"memory"`: one round of the capture and end-to-end sections, meters on). Models are built
    on `device` in `dtype`."""
    global PHASE, DEVICE, DTYPE
    if phase not in ("all", "time", "memory"):
        raise ValueError(f"phase must be all, time or memory, got {phase!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device on this machine")
    PHASE, DEVICE, DTYPE = phase, torch.device(device), getattr(torch, dtype)
    shapes, plan = SHAPES[mode], PLANS[mode]
    if threads:
        torch.set_num_threads(threads)
    n_new = plan["new_tokens"]
    import transformers

    result: dict[str, Any] = {
        "meta": {
            "mode": mode, "phase": phase, "plan": plan, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "device": DEVICE.type, "machine": platform.machine(), "cpu_count": os.cpu_count(), "dtype": dtype,
            "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
            "memory_method": "torch.cuda.max_memory_allocated deltas, in-process" if DEVICE.type == "cuda" else
            "VmHWM reset via /proc/self/clear_refs before each call, "
            f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}",
            "time_metric": "wall seconds (GPU)" if DEVICE.type == "cuda" else
            "process CPU seconds (torch pinned to the bench's threads; wall seconds kept as wall_s)",
            "shapes": {
                "llava": {**narrowing(shapes["llava"], LLAVA_REAL, "llava"), "config": shapes["llava"]},
                "qwen2_vl": {**narrowing(shapes["qwen"], QWEN_REAL, "qwen"), "config": shapes["qwen"]},
            },
        }
    }
    t0, cpu0 = time.perf_counter(), time.process_time()
    log(f"[bench] building LLaVA-1.5-shaped model ({mode})")
    llava = build_llava(shapes["llava"])
    image = make_image(640, 480)
    with torch.inference_mode():
        model_inputs(llava, [image], [QUESTION])  # warm the processor
        log("[bench] 1. attention capture (LLaVA)")
        result["attention_capture"] = {"llava": attention_capture(llava, image, plan["repeats"])}
        log("[bench] 2. end to end")
        engs = engines(llava, n_new)
        result["end_to_end"] = end_to_end(llava, image, plan["repeats"], n_new, engs)
        if phase == "memory":
            del engs, llava
            gc.collect()
            return _qwen_capture(result, shapes, plan, log, t0, cpu0)
        log("[bench] 3. cost floor")
        result["cost_floor"] = cost_floor(llava, image, plan["repeats"], n_new)
    t = {k: v["median_s"] for k, v in result["end_to_end"]["variants"].items()}
    floor = result["cost_floor"]
    result["floor_ratios"] = {
        "laser_over_floor_direct": round(t["laser"] / floor["floor_direct_s"], 3),
        "laser_full_over_floor_contrastive": round(t["laser_full"] / floor["floor_contrastive_s"], 3),
        "vanilla_over_floor_vanilla": round(t["vanilla"] / floor["floor_vanilla_s"], 3),
    }
    log("[bench] 4. batch throughput")
    result["batch_throughput"] = batch_throughput(engs["laser"], plan["batches"], plan["batch_repeats"], image.size)
    del engs, llava
    gc.collect()
    return _qwen_capture(result, shapes, plan, log, t0, cpu0)


def _qwen_capture(result, shapes, plan, log, t0, cpu0) -> dict[str, Any]:
    log("[bench] building Qwen2-VL-shaped model (high resolution)")
    qwen = build_qwen(shapes["qwen"])
    side = shapes["qwen"]["image_side"]
    with torch.inference_mode():
        model_inputs(qwen, [make_image(side, side)], [QUESTION])
        log("[bench] 1. attention capture (Qwen2-VL high-res)")
        result["attention_capture"]["qwen2_vl_highres"] = attention_capture(
            qwen, make_image(side, side, seed=1), plan["qwen_repeats"]
        )
    if PHASE != "time":
        log("[bench] 5. engine memory at a 72B attention shape")
        with torch.inference_mode():
            result["attention_memory_72b"] = attention_memory_72b(
                MEMORY_SHAPES[result["meta"]["mode"]], MEMORY_72B_BATCH[DEVICE.type]
            )
    if PHASE != "memory":
        result["targets"] = check_targets(result)
    result["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
    result["meta"]["cpu_s"] = round(time.process_time() - cpu0, 1)
    return result


MEMORY_FIELDS = ("peak_rss_delta_mib", "peak_rss_total_mib", "cuda_peak_delta_mib")


def merge_memory(result: dict[str, Any], memory: dict[str, Any]) -> None:
    """Put the memory phase's peaks into the time phase's result (same sections and variant names)."""
    sections = [(result["end_to_end"], memory["end_to_end"])]
    sections += [(result["attention_capture"][k], v) for k, v in memory["attention_capture"].items()]
    for target, source in sections:
        for name, measured in source["variants"].items():
            target["variants"][name].update({k: measured[k] for k in MEMORY_FIELDS if k in measured})
    result["end_to_end"]["ratios"].update(memory_ratios(result["end_to_end"]["variants"]))
    if "attention_memory_72b" in memory:
        result["attention_memory_72b"] = memory["attention_memory_72b"]
    result["meta"]["memory_method"] = memory["meta"]["memory_method"] + " (separate process, one round)"
    result["meta"]["memory_phase_wall_s"] = memory["meta"].get("wall_s")
    result["targets"] = check_targets(result)


def _fmt_mem(v: dict[str, Any]) -> str:
    m = v.get("peak_rss_delta_mib")
    return "-" if m is None else f"{m:,.0f}"


def table(result: dict[str, Any]) -> str:
    lines = []
    meta = result["meta"]
    lines.append(f"LASER bench ({meta['mode']}; torch {meta['torch']}, transformers {meta['transformers']}, "
                 f"{meta.get('gpu') or meta['device']}, {meta['threads']} thread(s), {meta['dtype']}; "
                 f"wall {meta.get('wall_s')} s, "
                 f"CPU {meta.get('cpu_s')} s)")
    lines.append(f"  times: {meta['time_metric']}; memory: {meta['memory_method']}")
    for fam, s in meta["shapes"].items():
        lines.append(f"  {fam}: shape of {s['real']}; kept {s['kept']}; narrowed {s['narrowed']}")
    lines.append("")
    lines.append("1. attention capture (one prefill with the question)")
    lines.append(f"  {'shape':<18}{'variant':<26}{'median s':>10}{'peak RSS +MiB':>15}{'attn kept':>14}")
    for shape, r in result["attention_capture"].items():
        for name, v in r["variants"].items():
            kept = v.get("kept_bytes")
            kept_s = "-" if kept is None else f"{kept / 2**20:,.1f} MiB"
            lines.append(f"  {shape:<18}{name:<26}{v['median_s']:>10.3f}{_fmt_mem(v):>15}{kept_s:>14}")
        if not r["eager_run"]:
            lines.append(f"  {shape:<18}{'eager_output_attentions':<26}{'not run':>10}{'':>15}"
                         f"{r['eager_attention_bytes'] / 2**20:,.0f} MiB")
        lines.append(f"  {shape:<18}T={r['seq_len']}, n_visual={r['n_visual']}, L={r['layers']}, H={r['heads']}: "
                     f"probe keeps {r['probe_attention_bytes'] / 2**20:.2f} MiB, eager {r['eager_needs_gb']} GB "
                     f"({r['attention_memory_ratio']:,.0f}x); probe overhead {100 * r['probe_overhead']:+.1f}%"
                     + (f"; eager/sdpa {r['eager_vs_sdpa']:.2f}x" if "eager_vs_sdpa" in r else ""))
    e2e = result["end_to_end"]
    lines.append("")
    lines.append(f"2. end to end, LLaVA shape, {e2e['new_tokens']} new tokens")
    lines.append(f"  {'method':<14}{'path':<14}{'median s':>10}{'peak RSS +MiB':>15}  stages")
    for name, v in e2e["variants"].items():
        stages = ", ".join(f"{k} {s:.2f}" for k, s in v.get("stages_s", {}).items() if k != "total")
        lines.append(f"  {name:<14}{v.get('path', ''):<14}{v['median_s']:>10.3f}{_fmt_mem(v):>15}  {stages}")
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in e2e["ratios"].items()))
    floor = result["cost_floor"]
    lines.append("")
    lines.append("3. cost floor (minimal forwards, each timed alone)")
    for name, v in floor["pieces"].items():
        lines.append(f"  {name:<26}{v['median_s']:>10.3f}")
    lines.append(f"  floor direct {floor['floor_direct_s']:.3f} s, contrastive {floor['floor_contrastive_s']:.3f} s; "
                 + ", ".join(f"{k} {v}" for k, v in result["floor_ratios"].items()))
    lines.append("")
    lines.append("4. LaserEngine.answer_batch throughput (laser, direct path)")
    for name, v in result["batch_throughput"].items():
        lines.append(f"  {name:<10}{v['median_s']:>10.3f} s{v['samples_per_s']:>10.3f} samples/s"
                     f"{v['throughput_vs_batch_1']:>8.2f}x")
    mem = result.get("attention_memory_72b")
    if mem is not None:
        sh = mem["shape"]
        lines.append("")
        lines.append(f"5. engine memory at a 72B attention shape ({sh['layers']} layers, {sh['heads']} heads, "
                     f"{sh['kv_heads']} KV heads, {sh['n_visual']:,} visual tokens, batch {sh['batch']}; head_dim "
                     f"{sh['head_dim']}, no model): probe rows kept (a+ and a0) {mem['rows_kept_mib']:,.0f} MiB")
        for name, v in mem["variants"].items():
            peak = "-" if v["peak_mib"] is None else f"{v['peak_mib']:,.0f} MiB"
            lines.append(f"  {name:<30}{v['wall_s']:>8.2f} s  peak beyond the model {peak:>12}")
        if "engine_peak_over_rows" in mem:
            lines.append(f"  engine peak / rows kept: {mem['engine_peak_over_rows']}x "
                         f"(whole-tensor localisation before: {mem['before_peak_over_rows']}x)")
    lines.append("")
    lines.append("targets")
    for t in result["targets"]:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        lines.append(f"  [{mark}] {t['target']}: {t['value']} ({t['bound']})")
    return "\n".join(lines)


def output_paths(out: str, device: str) -> tuple[Path, Path | None]:
    """(JSON path, table path or None) for `--out`: a folder (existing, or written with a trailing
    slash) gets `<cpu|gpu>.json` and `<cpu|gpu>.txt`; anything else is the JSON file itself."""
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        name = "gpu" if device == "cuda" else "cpu"
        return path / f"{name}.json", path / f"{name}.txt"
    return path, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (~1 min)")
    parser.add_argument("--out", default="bench.json",
                        help="JSON file, or a folder (DIR/) that gets cpu.json + cpu.txt (gpu.* on CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: CPU time = work)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: LLaVA at full 7B width, wall times, CUDA peak memory, batch 8 vs 1")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--phase", choices=["all", "time", "memory"], default="all",
                        help="all (default): times here, memory from a child process (CPU); time / memory: one of them")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "gpu" if args.device == "cuda" else "default"
    json_path, text_path = output_paths(args.out, args.device)
    json_path.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    common = {"log": log, "device": args.device, "dtype": args.dtype}
    linux = sys.platform.startswith("linux")
    if args.phase == "memory":
        if linux and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
            os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)
        result = run(mode, args.threads, phase="memory", **common)
        json_path.write_text(json.dumps(result, indent=2, default=str))
        return 0
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        log("[bench] warning: MALLOC_MMAP_THRESHOLD_ is set; times will include page faults users do not pay")
    memory = None
    if args.phase == "all" and linux and args.device == "cpu":  # CUDA peaks are measured in-process
        log("[bench] memory phase (child process, MALLOC_MMAP_THRESHOLD_ fixed)")
        with tempfile.TemporaryDirectory() as tmp:
            mem_out = Path(tmp) / "memory.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--phase", "memory", "--out", str(mem_out),
                       "--threads", str(args.threads), "--dtype", args.dtype, *(["--quick"] if args.quick else [])]
            subprocess.run(command, check=True)
            memory = json.loads(mem_out.read_text())
        log("[bench] time phase")
    result = run(mode, args.threads, phase="time" if memory is not None else args.phase, **common)
    if memory is not None:
        merge_memory(result, memory)
    text = table(result)
    print(text)
    result["table"] = text
    json_path.write_text(json.dumps(result, indent=2, default=str))
    if text_path is not None:
        text_path.write_text(text + "\n")
    print(f"\nwrote {json_path}" + (f" and {text_path}" if text_path else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
