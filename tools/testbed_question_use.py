"""Does a testbed model read the question? Question pairs on one scene about two boxes with different digits.

    python tools/testbed_question_use.py --model testbed --split-seeds 0 2 [--layers] [--out FILE.md]

For every scene of each split (0 = the shipped split; others are materialised under `--work`): one reading
question per box, and up to `--pairs-per-scene` pairs of medium/large boxes. Prints, with vanilla decoding,
the share of pairs answered differently, the share of questions whose target is not the largest box
answered with the largest box's digit (medium/large targets, and small ones), and reading accuracy per
target size; with `--layers`, per decoder layer, how often the crop from that layer's map holds the asked
box's centre, against the crop from the map of the pair's other question (`laser.testbed.question_use`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from laser.adapters import create_adapter  # noqa: E402
from testbed_table import processor_settings, resolve_model, split_root  # noqa: E402

from laser.testbed.benchmark import load_split  # noqa: E402
from laser.testbed.question_use import layer_crop_hits, question_records, question_use, question_use_lines  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="testbed", help="model preset name or checkpoint folder")
    ap.add_argument("--split-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--work", default="testbed_work/splits")
    ap.add_argument("--pairs-per-scene", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=None, help="only the first N scenes of each split")
    ap.add_argument("--layers", action="store_true", help="also the per-layer crop hits")
    ap.add_argument("--processor", nargs="*", default=[], metavar="KEY=VALUE",
                    help="processor settings of the model, e.g. max_pixels=16384 (Qwen2-VL at 128x128 pixels)")
    ap.add_argument("--out", default=None, help="write the Markdown here too (and the figures as .json beside it)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    model_path, model_ref = resolve_model(a.model)
    processor = processor_settings(a.processor)
    adapter = create_adapter(str(model_path), processor_kwargs=processor)
    model_ref += "".join(f" ({k}={v})" for k, v in processor.items())
    lines, figures = [f"<!-- python tools/testbed_question_use.py {' '.join(sys.argv[1:])} -->"], {}
    for seed in a.split_seeds:
        root = split_root(seed, Path(a.work))
        split = load_split(path=root / "eval.jsonl")
        if a.scenes:
            keep = sorted({r["meta"]["scene_seed"] for r in split})[: a.scenes]
            split = [r for r in split if r["meta"]["scene_seed"] in keep]
        questions = question_records(split, a.pairs_per_scene)
        use = question_use(adapter, questions, root)
        crops = layer_crop_hits(adapter, questions, root, range(adapter.num_layers)) if a.layers else None
        lines += ["", f"### {model_ref}, split seed {seed}: {len(questions.records)} questions, "
                      f"{len(questions.pairs)} pairs", ""] + question_use_lines(use, crops)
        figures[seed] = {k: v for k, v in use.items() if k != "answers"} | ({"layer_crops": crops} if crops else {})
    text = "\n".join(lines)
    print(text)
    print(f"done in {time.perf_counter() - start:.0f} s")
    if a.out:
        Path(a.out).write_text(text + "\n")
        Path(a.out).with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
