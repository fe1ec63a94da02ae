"""Quick evaluation helpers for the testbed model: full scene vs oracle crop.

`oracle_crop(rec, size)` is a square crop around the target (`oracle_tight`'s 2.5x its side, without
its 64 px floor; for relational questions also covering the anchor box), clipped to the image.
`first_token_eval` scores the greedy first answer token (every answer is one token) per family/size
for both views.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

from laser.testbed.benchmark import TIGHT_PAIR_MARGIN, TIGHT_SIDE_FACTOR
from testbed.model import prompt


def oracle_crop(rec: dict, size: int) -> tuple[int, int, int, int]:
    m = rec["meta"]
    x0, y0, x1, y1 = m["target_box"]
    side = TIGHT_SIDE_FACTOR * max(x1 - x0, y1 - y0)
    if "anchor_box" in m:
        a = m["anchor_box"]
        x0, y0, x1, y1 = min(x0, a[0]), min(y0, a[1]), max(x1, a[2]), max(y1, a[3])
        side = max(side, TIGHT_PAIR_MARGIN * max(x1 - x0, y1 - y0))
    side = min(side, size)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0.0, cx - side / 2), size - side)
    top = min(max(0.0, cy - side / 2), size - side)
    return round(left), round(top), round(left + side), round(top + side)


def load_views(recs, img_root):
    full, crop = [], []
    cache = {}
    for r in recs:
        if r["image"] not in cache:
            cache[r["image"]] = Image.open(Path(img_root) / r["image"]).convert("RGB")
        im = cache[r["image"]]
        full.append(im)
        crop.append(im.crop(oracle_crop(r, im.size[0])))
    return full, crop


def summarize(recs, correct) -> dict:
    acc = defaultdict(lambda: [0, 0])
    for r, ok in zip(recs, correct):
        fam, size = r["meta"]["family"], r["meta"]["size"]
        for key in (f"{fam}/{size}", f"{fam}/all", "all/all"):
            acc[key][0] += int(ok)
            acc[key][1] += 1
    return {k: (v[0] / v[1], v[1]) for k, v in acc.items()}


@torch.no_grad()
def first_token_eval(model, processor, recs, img_root, batch: int = 32, prompt_fn=prompt,
                     views: tuple[str, ...] = ("full", "oracle")) -> dict:
    """{view: summarize(...)} for `views` (of "full", "oracle"); `prompt_fn(question)` is the model's
    prompt (default the LLaVA testbed's)."""
    tok = processor.tokenizer
    full, crop = load_views(recs, img_root)
    res = {}
    for name, images in (("full", full), ("oracle", crop)):
        if name not in views:
            continue
        correct = []
        for i in range(0, len(recs), batch):
            rs = recs[i : i + batch]
            inp = processor(text=[prompt_fn(r["question"]) for r in rs], images=images[i : i + batch],
                            return_tensors="pt", padding=True)
            logits = model(**inp).logits[:, -1]
            pred = tok.convert_ids_to_tokens(logits.argmax(-1).tolist())
            correct += [p in [a.lower() for a in r["answers"]] for p, r in zip(pred, rs)]
        res[name] = summarize(recs, correct)
    return res
