"""The testbed results of the README: every method on a testbed split, for a testbed model.

    python tools/testbed_table.py --out docs/testbed
    python tools/testbed_table.py --model testbed_emergent --split-seeds 0 2 --dev-seed 1 --out docs/testbed_emergent

`--model` is a model preset (`configs/model/<name>.yaml`) or a checkpoint folder. `--split-seeds` are
generator seeds of the evaluation splits (0 = the shipped split; any other is materialised under
`--work`, deterministically, with scene seeds disjoint from training and from the other seeds).
With `--dev-seed`, `laser_static` runs at every decoder layer on that dev split first; the layer with
the best dev accuracy becomes `laser_static_best` on every split, and the paired differences are also
given against it.

Writes `results.md` (per split: accuracy per family and size bucket with 95% bootstrap intervals,
paired differences to vanilla and to the best static layer, the chosen layer per family with its hit
rate, mean VAQ per layer per family, the share of crops that contain the target per method and per
chosen layer, and the question-use figures of `laser.testbed.question_use`), `results.json`, one run folder per method (`runs/<method>/`, or `seed<S>/runs/<method>/`
with several splits; readable by `laser evaluate` and `laser compare`), `layer_profile.png` (mean VAQ
per layer per question family) and `chosen_layers.png` (histogram of l* per family).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laser.adapters import create_adapter  # noqa: E402

from laser.method.config import LaserConfig  # noqa: E402
from laser.method.engine import LaserEngine  # noqa: E402
from laser.paths import assets_dir, config_dir  # noqa: E402
from laser.records.metrics import bootstrap_ci  # noqa: E402
from laser.testbed.benchmark import (  # noqa: E402
    FAMILIES,
    crop_contains_target,
    load_split,
    paired_difference_ci,
    results_table,
    run_methods,
)
from laser.testbed.question_use import layer_crop_hits, question_records, question_use, question_use_lines  # noqa: E402
from laser.testbed.split import materialize_split  # noqa: E402

METHODS = ["vanilla", "oracle", "oracle_tight", "vicrop", "vcd", "vcd_greedy", "laser", "laser_full", "laser_static"]
BEST_STATIC = "laser_static_best"
MODEL_LABEL = {"testbed": "Testbed LLaVA", "testbed_emergent": "Emergent testbed LLaVA", "testbed_qwen": "Testbed Qwen2-VL"}


def resolve_model(name: str) -> tuple[Path, str]:
    """(checkpoint folder, `name_or_path` as a run config writes it) of a model preset or a folder."""
    preset = config_dir() / "model" / f"{name}.yaml"
    if preset.is_file():
        from omegaconf import OmegaConf

        ref = str(OmegaConf.load(preset).name_or_path)
        path = Path(__file__).resolve().parents[1] / "laser" / ref.removeprefix("laser:") if ref.startswith("laser:") else Path(ref)
        return path, ref
    return Path(name), name


def split_root(seed: int, work: Path) -> Path:
    """Folder holding `eval.jsonl` and `images/` of the split with generator seed `seed`."""
    if seed == 0:
        return assets_dir() / "testbed"
    root = work / f"seed{seed}"
    if not (root / "eval.jsonl").is_file():
        materialize_split(root, seed=seed)
    return root


def processor_settings(pairs: list[str]) -> dict:
    """`--processor KEY=VALUE ...` -> processor kwargs, integers and floats parsed ("max_pixels=16384")."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--processor {pair!r}: expected KEY=VALUE, e.g. max_pixels=16384")
        for cast in (int, float, str):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
    return out


def write_run(folder: Path, method: str, records: list[dict], rows: list[dict], model_ref: str, root: Path,
              config: LaserConfig | None = None, processor: dict | None = None) -> None:
    """A run folder like `laser predict` writes, so `laser evaluate` / `laser compare` read it."""
    folder.mkdir(parents=True, exist_ok=True)
    shipped = root == assets_dir() / "testbed"
    annotations = "laser:assets/testbed/eval.jsonl" if shipped else str(root / "eval.jsonl")
    if config is not None:
        method_cfg = config.to_dict()
    else:
        method_cfg = {"name": method} if method.startswith("oracle") else LaserConfig.preset(method).to_dict()
    config = {
        "model": {"name_or_path": model_ref, "adapter": None, "dtype": "auto", **({"processor": processor} if processor else {})},
        "data": {"format": "jsonl", "annotations": annotations, "image_root": "laser:assets/testbed" if shipped else str(root),
                 "metric": "exact", "limit": None},
        "method": method_cfg,
        "seed": 0,
    }  # fmt: skip
    (folder / "run_config.json").write_text(json.dumps(config, indent=2) + "\n")
    by_id = {r["sample_id"]: r for r in records}
    with (folder / "predictions.rank0.jsonl").open("w") as f:
        for row in rows:
            rec = by_id[row["sample_id"]]
            out = {
                "sample_id": row["sample_id"], "question": rec["question"], "answers": rec["answers"],
                "prediction": row["prediction"], "layer": row["layer"], "vaq": row["vaq"], "box": row["box"],
                "path": row["path"], "timings": {}, "error": None, "meta": rec["meta"],
                "masked_cells": row.get("masked_cells"),
            }  # fmt: skip
            f.write(json.dumps(out) + "\n")


def layer_figures(rows: list[dict], num_layers: int, out: Path, label: str = "Testbed LLaVA") -> None:
    layers = np.arange(num_layers)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for family in FAMILIES:
        vaq = np.array([r["vaq"] for r in rows if r["family"] == family and r["vaq"]])
        if len(vaq):
            mean = vaq.mean(0)
            sem = vaq.std(0) / np.sqrt(len(vaq))
            ax.plot(layers, mean, marker="o", label=f"{family} (n={len(vaq)})")
            ax.fill_between(layers, mean - 1.96 * sem, mean + 1.96 * sem, alpha=0.2)
    ax.set(xlabel="decoder layer l", ylabel="mean VAQ[l]", title=f"{label}: VAQ per layer by family")
    ax.set_xticks(layers)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "layer_profile.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.8 / len(FAMILIES)
    for i, family in enumerate(FAMILIES):
        chosen = [r["layer"] for r in rows if r["family"] == family and r["layer"] is not None]
        if chosen:
            share = np.bincount(chosen, minlength=num_layers) / len(chosen)
            ax.bar(layers + (i - 1) * width, share, width, label=f"{family} (n={len(chosen)})")
    ax.set(xlabel="chosen layer l*", ylabel="share of questions", title=f"{label}: layer chosen by VAQ")
    ax.set_xticks(layers)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=len(FAMILIES), fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "chosen_layers.png", dpi=120)
    plt.close(fig)


def _pct(hits: list) -> str:
    return f"{100 * np.mean(hits):.0f}% ({len(hits)})" if hits else "–"


def layer_tables(rows: list[dict], num_layers: int) -> str:
    """Markdown: per family, the share of questions VAQ sends to each layer, their accuracy and how often
    the crop contains the target; and the mean VAQ per layer per family."""
    lines = ["Chosen layer l* per family: share of the family's questions · accuracy · crop contains the target",
             "", "| family | " + " | ".join(f"l={layer}" for layer in range(num_layers)) + " |",
             "|" + "---|" * (num_layers + 1)]
    for family in (*FAMILIES, "all"):
        fam = [r for r in rows if (family == "all" or r["family"] == family) and r["layer"] is not None]
        cells = []
        for layer in range(num_layers):
            at = [r for r in fam if r["layer"] == layer]
            if not at:
                cells.append("–")
                continue
            inside = [c for c in map(crop_contains_target, at) if c is not None]
            share = 100 * len(at) / len(fam)
            acc = 100 * np.mean([r["correct"] for r in at])
            cells.append(f"{share:.0f}% · {acc:.0f}% · {_pct(inside)}")
        lines.append(f"| {family} (n={len(fam)}) | " + " | ".join(cells) + " |")
    lines += ["", "Mean VAQ[l] per family", "", "| family | " + " | ".join(f"l={layer}" for layer in range(num_layers)) + " |",
              "|" + "---|" * (num_layers + 1)]
    for family in FAMILIES:
        vaq = np.array([r["vaq"] for r in rows if r["family"] == family and r["vaq"]])
        if len(vaq):
            lines.append(f"| {family} | " + " | ".join(f"{v:.3f}" for v in vaq.mean(0)) + " |")
    return "\n".join(lines)


def containment_table(results: dict[str, list[dict]]) -> str:
    """Markdown: share of crops that contain the whole target box / the target's centre, per method and
    family (n = questions with a crop and a target box; "no" existence answers have none)."""
    lines = ["| method (whole target / its centre) | all | " + " | ".join(FAMILIES) + " | size=small |",
             "|---|---|" + "---|" * len(FAMILIES) + "---|"]
    for method, rows in results.items():
        rows = [r for r in rows if crop_contains_target(r) is not None]
        if not rows:
            continue
        groups = [rows] + [[r for r in rows if r["family"] == f] for f in FAMILIES]
        groups.append([r for r in rows if r["size"] == "small"])
        cells = []
        for group in groups:
            whole = [crop_contains_target(r) for r in group]
            centre = [crop_contains_target(r, centre=True) for r in group]
            cells.append(f"{100 * np.mean(whole):.0f}% / {100 * np.mean(centre):.0f}% ({len(group)})" if group else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SUMMARY_PAIRS = (("laser", "vanilla"), ("laser", "laser_static"), ("laser", BEST_STATIC), ("laser_full", "laser_static"),
                 ("vicrop", "vanilla"), ("oracle", "vanilla"), ("oracle_tight", "vanilla"))


def summary_tables(splits: dict[int, dict[str, list[dict]]]) -> str:
    """Markdown for the README: accuracy per method on every split (all questions, reading, small targets),
    and the paired differences of `SUMMARY_PAIRS` on every split (all questions and small targets)."""
    seeds = list(splits)

    def acc(rows):
        values = [float(r["correct"]) for r in rows]
        low, high = bootstrap_ci(values, n=1000)
        return f"{100 * np.mean(values):.1f} [{100 * low:.0f}, {100 * high:.0f}]"

    head = " | ".join(f"seed {s}: all | seed {s}: reading | seed {s}: small targets" for s in seeds)
    lines = [f"| method, accuracy % [95% CI] | {head} |", "|---|" + "---|" * (3 * len(seeds))]
    for method in splits[seeds[0]]:
        cells = []
        for s in seeds:
            rows = splits[s][method]
            cells += [acc(rows), acc([r for r in rows if r["family"] == "reading"]),
                      acc([r for r in rows if r["size"] == "small"])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    head = " | ".join(f"seed {s}: all | seed {s}: small targets" for s in seeds)
    lines += ["", f"| paired difference, points [95% CI] | {head} |", "|---|" + "---|" * (2 * len(seeds))]
    for a, b in SUMMARY_PAIRS:
        if a not in splits[seeds[0]] or b not in splits[seeds[0]]:
            continue
        cells = []
        for s in seeds:
            base = {r["sample_id"]: r for r in splits[s][b]}
            for keep in (lambda r: True, lambda r: r["size"] == "small"):
                chosen = [r for r in splits[s][a] if keep(r)]
                mean, low, high = paired_difference_ci([r["correct"] for r in chosen],
                                                       [base[r["sample_id"]]["correct"] for r in chosen])
                cells.append(f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def static_sweep(adapter, records: list[dict], root: Path) -> dict[int, float]:
    """Accuracy of `laser_static` at every decoder layer on the dev records."""
    configs = {f"static@{layer}": LaserConfig.preset("laser_static", **{"vaq.layer": layer}) for layer in range(adapter.num_layers)}
    results = run_methods(adapter, records, configs, image_root=root, progress=True)
    return {int(name.split("@")[1]): float(np.mean([r["correct"] for r in rows])) for name, rows in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/testbed")
    parser.add_argument("--model", default="testbed", help="model preset name or checkpoint folder")
    parser.add_argument("--split-seeds", type=int, nargs="*", default=[0], help="generator seeds of the evaluated splits")
    parser.add_argument("--dev-seed", type=int, default=None, help="split seed on which the best static layer is chosen")
    parser.add_argument("--work", default="testbed_work/splits", help="where non-shipped splits are materialised")
    parser.add_argument("--per-cell", type=int, default=None, help="limit questions per (family, size)")
    parser.add_argument("--best-static", type=int, default=None,
                        help="the best static layer, when an earlier --dev-seed run chose it (skips the sweep)")
    parser.add_argument("--dev-per-cell", type=int, default=None, help="limit dev questions per (family, size)")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--processor", nargs="*", default=[], metavar="KEY=VALUE",
                        help="processor settings of the model, e.g. max_pixels=16384 (Qwen2-VL at 128x128 pixels); "
                             "recorded in the run folders, so `laser compare` treats them as another model")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)  # the testbed model is tiny: one thread is faster than two
    start = time.perf_counter()
    model_path, model_ref = resolve_model(args.model)
    processor = processor_settings(args.processor)
    label = MODEL_LABEL.get(args.model, model_path.name) + "".join(f", {k}={v}" for k, v in processor.items())
    adapter = create_adapter(str(model_path), processor_kwargs=processor)
    work = Path(args.work)
    default_layer = LaserEngine(adapter, LaserConfig.preset("laser_static")).static_layer()
    command = "python tools/testbed_table.py " + " ".join(sys.argv[1:])
    report = [f"<!-- {command} -->"]
    methods = list(args.methods)
    configs: dict[str, LaserConfig] = {}
    summary: dict = {"model": model_ref, "splits": {}}
    if args.dev_seed is not None:
        dev_root = split_root(args.dev_seed, work)
        dev = load_split(args.dev_per_cell, path=dev_root / "eval.jsonl")
        print(f"dev split seed {args.dev_seed}: {len(dev)} questions, laser_static at every layer", flush=True)
        sweep = static_sweep(adapter, dev, dev_root)
        best = max(sweep, key=lambda layer: (sweep[layer], -layer))
        configs[BEST_STATIC] = LaserConfig.preset("laser_static", **{"vaq.layer": best})
        methods.append(BEST_STATIC)
        summary["dev"] = {"seed": args.dev_seed, "n": len(dev), "static_accuracy": sweep, "best_layer": best}
        report += [f"## Best static layer (dev split, generator seed {args.dev_seed}, {len(dev)} questions)", "",
                   "| layer | " + " | ".join(str(layer) for layer in sweep) + " |", "|" + "---|" * (len(sweep) + 1),
                   "| laser_static accuracy | " + " | ".join(f"{100 * a:.1f}" for a in sweep.values()) + " |", "",
                   f"`{BEST_STATIC}` = `laser_static` with `vaq.layer={best}`; `laser_static` uses the adapter's "
                   f"default layer ({default_layer}).", ""]  # fmt: skip
    if args.best_static is not None:
        configs[BEST_STATIC] = LaserConfig.preset("laser_static", **{"vaq.layer": args.best_static})
        methods.append(BEST_STATIC)
        report += [f"`{BEST_STATIC}` = `laser_static` with `vaq.layer={args.best_static}` (chosen on the dev split by "
                   f"a `--dev-seed` run); `laser_static` uses the adapter's default layer ({default_layer}).", ""]
    references = ("vanilla", BEST_STATIC)
    for seed in args.split_seeds:
        root = split_root(seed, work)
        records = load_split(args.per_cell, path=root / "eval.jsonl")
        print(f"split seed {seed}: {len(records)} questions, methods: {', '.join(methods)}", flush=True)
        results = run_methods(adapter, records, {m: configs.get(m) for m in methods}, image_root=root, progress=True)
        folder = out if len(args.split_seeds) == 1 else out / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        name = "the shipped split (seed 0)" if seed == 0 else f"the split of generator seed {seed}"
        report += [f"## {name}: {len(records)} questions", "", results_table(results, references), ""]
        if "laser" in results:
            report += ["### Where VAQ looks (`laser`)", "", layer_tables(results["laser"], adapter.num_layers), ""]
            layer_figures(results["laser"], adapter.num_layers, folder, label)
        report += ["### Crops that contain the target", "", containment_table(results), ""]
        questions = question_records(records)
        use = question_use(adapter, questions, root)
        crops = layer_crop_hits(adapter, questions, root, range(adapter.num_layers))
        report += ["### Does the model read the question?", "",
                   f"One reading question per box of every scene ({len(questions.records)}), vanilla decoding; "
                   f"{len(questions.pairs)} pairs of questions about two medium/large boxes of one scene (different "
                   "digits). Per layer: how often the crop of `laser_static` at that layer holds the asked box's "
                   "centre, and how often the crop made for the pair's other question holds it.", "",
                   *question_use_lines(use, crops), ""]
        summary.setdefault("question_use", {})[seed] = {k: v for k, v in use.items() if k != "answers"} | {
            "layer_crops": crops}
        for method, rows in results.items():
            write_run(folder / "runs" / method, method, records, rows, model_ref, root, configs.get(method), processor)
        summary["splits"][seed] = results
    text = "\n".join(report)
    (out / "results.md").write_text(text + "\n")
    (out / "summary.md").write_text(f"<!-- {command} -->\n" + summary_tables(summary["splits"]) + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)
    print(f"done in {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
