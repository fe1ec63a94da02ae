"""Quick check of the testbed model: accuracy per family / size on (a) full scenes and (b) the
oracle crop around the target (>= 2.5x its side, resized by the processor), greedy `generate`.

python tools/testbed_eval_quick.py [--model laser/assets/testbed/model] [--limit 800] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from testbed.model import prompt  # noqa: E402
from testbed.quick_eval import load_views, summarize  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

from laser.testbed.split import load_split  # noqa: E402


@torch.no_grad()
def generate_answers(model, processor, images, questions, batch=32):
    out = []
    for i in range(0, len(questions), batch):
        inp = processor(text=[prompt(q) for q in questions[i : i + batch]], images=images[i : i + batch],
                        return_tensors="pt", padding=True)
        g = model.generate(**inp, max_new_tokens=3, do_sample=False)
        out += [s.strip().lower() for s in processor.tokenizer.batch_decode(g[:, inp["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "laser/assets/testbed/model"))
    ap.add_argument("--split", default=str(ROOT / "laser/assets/testbed/eval.jsonl"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = LlavaForConditionalGeneration.from_pretrained(a.model).eval()
    proc = AutoProcessor.from_pretrained(a.model)
    recs = load_split(a.split)
    recs = recs[: a.limit] if a.limit else recs
    full, crop = load_views(recs, Path(a.split).parent)
    t = time.time()
    table = {}
    for name, images in (("full", full), ("oracle_crop", crop)):
        preds = generate_answers(model, proc, images, [r["question"] for r in recs])
        table[name] = summarize(recs, [p in [x.lower() for x in r["answers"]] for p, r in zip(preds, recs)])
    keys = sorted(set(table["full"]) | set(table["oracle_crop"]))
    print(f"{'family/size':22s} {'n':>5s} {'full':>7s} {'oracle':>7s}")
    for k in keys:
        f, o = table["full"].get(k, (0, 0)), table["oracle_crop"].get(k, (0, 0))
        print(f"{k:22s} {f[1]:5d} {f[0]:7.3f} {o[0]:7.3f}")
    print(f"({len(recs)} questions, {time.time() - t:.0f}s)")


if __name__ == "__main__":
    main()
