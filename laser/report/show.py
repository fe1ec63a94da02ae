"""`laser show`: one picture of one sample (heatmap of l*, crop, counterfactual mask, VAQ, answers).

laser show <run_dir> <sample_id> [--out PNG]
    re-runs the engine on that sample with the run's model, method and per-sample seed (plus vanilla),
    with save_heatmap=True; default output <run_dir>/show/<sample_id>.png
laser show --image X --question Y [--model M] [--method laser] [--answers A ...] [--out PNG]
    one-off: M is a configs/model name (default testbed) or a checkpoint folder / hub name
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..loading import load_engine, model_spec
from ..method.config import LaserConfig
from ..paths import resolve_path
from ..records.files import RUN_CONFIG, merge_records
from .runs import short_name


def _load(spec: dict[str, Any], method: Any, device: str = "auto"):
    """The engine of `method` on the model of `spec`; only its `name_or_path`, `adapter` and `dtype` are
    used (a run's loading keys, such as its device map, are for its own devices)."""
    model = {key: spec.get(key) for key in ("name_or_path", "adapter", "dtype")}
    return load_engine(model, method, device=device)


def run_sample(run: dict[str, Any], sample_id: str) -> tuple[Any, str, list[str], Any]:
    """(image, question as the model saw it, reference answers, the sample) of a run's sample."""
    from ..data import format_question, load_image, read_annotations
    from ..data.formats import default_image_root

    data = run.get("data") or {}
    annotations = resolve_path(data.get("annotations"))
    if not annotations:
        raise ValueError(
            "the run's run_config.json names no data.annotations; use --image/--question instead"
        )
    samples = read_annotations(
        data.get("format", "jsonl"), Path(annotations), "skip", **(data.get("reader_options") or {})
    )
    sample = next((s for s in samples if s.sample_id == sample_id), None)
    if sample is None:
        raise ValueError(f"sample_id {sample_id!r} is not in {annotations}")
    root = resolve_path(data.get("image_root"))
    root = Path(root) if root else default_image_root(data.get("format", "jsonl"), annotations)
    image, error = load_image(root / sample.image)
    if image is None:
        raise ValueError(f"image of sample {sample_id!r} cannot be read: {error}")
    return image, format_question(sample), list(sample.answers), sample


def explain(
    adapter: Any,
    method: LaserConfig,
    image: Any,
    question: str,
    seed: int | None = None,
) -> tuple[Any, str]:
    """The method's prediction (with its heatmap) and the vanilla answer on the same image."""
    from ..method.engine import LaserEngine

    method = method.replace(save_heatmap=True)
    seeds = None if seed is None else [seed]
    prediction = LaserEngine(adapter, method).answer_batch([image], [question], seeds)[0]
    if method.name == "vanilla":
        return prediction, prediction.answer
    vanilla = LaserConfig.preset("vanilla", **{"decode.max_new_tokens": method.decode.max_new_tokens})
    return prediction, LaserEngine(adapter, vanilla).answer_batch([image], [question], seeds)[0].answer


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "sample"


def show_run_sample(
    run_dir: str | Path, sample_id: str, out: str | Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Re-run one sample of a run (its model, method and per-sample seed) and draw it."""
    from ..loading import sample_seed
    from .overlay import OverlaySample, render_overlay

    folder = Path(run_dir)
    config_path = folder / RUN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {RUN_CONFIG}; is it a `laser predict` run folder?")
    run = json.loads(config_path.read_text())
    records, _ = merge_records(folder)
    recorded = next((r for r in records if str(r.get("sample_id")) == sample_id), None)
    image, question, answers, _ = run_sample(run, sample_id)
    engine = _load(run.get("model") or {}, run.get("method") or "laser", device)
    method, adapter = engine.config, engine.adapter
    seed = sample_seed(int(run.get("seed", 0)), sample_id)
    prediction, vanilla = explain(adapter, method, image, question, seed)
    model_name = short_name((run.get("model") or {}).get("name_or_path"))
    path = render_overlay(
        OverlaySample(image, prediction, vanilla, question, answers),
        out or folder / "show" / f"{_safe_name(sample_id)}.png",
        adapter.num_layers,
        method,
        title=f"{model_name} · {method.name} · sample {sample_id}",
    )
    return {
        "path": path,
        "prediction": prediction,
        "vanilla": vanilla,
        "recorded": None if recorded is None else recorded.get("prediction"),
    }


def show_image(
    sample: dict[str, Any],
    model: str = "testbed",
    method: str = "laser",
    out: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Answer one question about one image with `method` and vanilla, and draw it. `sample` is a record
    like a data set's: {"image": path, "question": ..., "answers": [...] (optional)}."""
    image_path, question, answers = sample["image"], sample["question"], sample.get("answers")
    from ..data import load_image
    from .overlay import OverlaySample, render_overlay

    image, error = load_image(Path(image_path))
    if image is None:
        raise ValueError(f"cannot read image {str(image_path)!r}: {error}")
    spec = model_spec(model)
    engine = _load(spec, method, device)
    config, adapter = engine.config, engine.adapter
    prediction, vanilla = explain(adapter, config, image, question, config.seed)
    path = render_overlay(
        OverlaySample(image, prediction, vanilla, question, list(answers) if answers else None),
        out or f"show_{_safe_name(Path(image_path).stem)}.png",
        adapter.num_layers,
        config,
        title=f"{short_name(spec['name_or_path'])} · {config.name}",
    )
    return {"path": path, "prediction": prediction, "vanilla": vanilla, "recorded": None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="laser show",
        description="One picture of one sample: heatmap of the chosen layer, crop, counterfactual mask, "
        "VAQ per layer and the answers of vanilla and the method.",
    )
    parser.add_argument("run_dir", nargs="?", help="a run folder written by `laser predict`")
    parser.add_argument("sample_id", nargs="?", help="the sample of that run to draw")
    parser.add_argument("--image", help="one-off: an image file")
    parser.add_argument("--question", help="one-off: the question about --image")
    parser.add_argument("--answers", nargs="*", default=None, help="one-off: reference answers (optional)")
    parser.add_argument(
        "--model", default="testbed", help="one-off: configs/model name or checkpoint (default testbed)"
    )
    parser.add_argument(
        "--method", default="laser", help="one-off: method preset or YAML file (default laser)"
    )
    parser.add_argument("--out", default=None, help="output PNG path")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.image or args.question:
        if not (args.image and args.question) or args.run_dir:
            parser.error("one-off use needs both --image and --question, and no run_dir")
        sample = {"image": args.image, "question": args.question, "answers": args.answers}
        result = show_image(sample, args.model, args.method, args.out, args.device)
    elif args.run_dir and args.sample_id:
        result = show_run_sample(args.run_dir, args.sample_id, args.out, args.device)
    else:
        parser.error("give <run_dir> <sample_id>, or --image X --question Y")
    prediction = result["prediction"]
    print(f"{prediction.method}: {prediction.answer!r} (path {prediction.path}, l* {prediction.layer})")
    print(f"vanilla: {result['vanilla']!r}")
    if result["recorded"] is not None and result["recorded"] != prediction.answer:
        print(f"note: the run recorded {result['recorded']!r} for this sample (different device or dtype?)")
    print(f"wrote {result['path']}")
    return 0
