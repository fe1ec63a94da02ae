"""Which parts of "find the box the question names" the emergent testbed's language model learns from the
answer alone: short trainings of the emergent architecture on one question family, from scratch.

    python tools/emergent_probes.py TASK [--steps 400] [--tower testbed_work/em4/last.pt] [--order image-first]

TASK (all on "Is there a <colour> box?" views of one to three big boxes, `tools/testbed/views.py` stage 0):
  existence       the real answer (is a box of the named colour in view): needs the colour word and the image
  colour-word     an answer from the colour word alone (yes for red, green, blue): the question, no image
  colour-present  whether a red box is in view, whatever the question names: the image, no question
  text-existence  the real answer with the view given in words ("red 3 , blue 7") instead of its image

The frozen, pre-trained tower is taken from `--tower` (a RUN/last.pt of tools/train_emergent.py); the
projector (fixed norm) and an 8-layer Llama are trained with AdamW at 1e-3 on the answer loss. Prints the
first-answer-token accuracy on the training batches every 50 steps.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

import torch  # noqa: E402
import train_emergent as te  # noqa: E402
from testbed import views  # noqa: E402
from testbed.batching import AnswerBatcher, TextBatcher  # noqa: E402
from testbed.losses import answer_loss, first_token_hits  # noqa: E402
from testbed.model import TEMPLATES, build_processor, build_tokenizer  # noqa: E402

TASKS = ("existence", "colour-word", "colour-present", "text-existence")


def relabel(d: dict, task: str) -> None:
    """Replace the answers of `d` for the probe tasks that do not use the real one."""
    if task == "colour-word":
        d["answers"] = ["yes" if any(c in q for c in ("red", "green", "blue")) else "no" for q in d["questions"]]
    elif task == "colour-present":
        d["answers"] = ["yes" if (labels == 0).any() else "no" for labels in d["color_labels"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--tower", default=str(ROOT / "testbed_work/em4/last.pt"))
    ap.add_argument("--order", choices=sorted(TEMPLATES), default="image-first")
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = build_tokenizer()
    proc = build_processor(tok)
    model = te.build_vit(tok)
    state = torch.load(a.tower, weights_only=False)["model"]
    model.model.vision_tower.load_state_dict(
        {k.split("vision_tower.", 1)[1]: v for k, v in state.items() if "vision_tower." in k})
    model.model.vision_tower.requires_grad_(False)
    te.fix_projector_norm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    views.FAMILY_WEIGHTS.clear()
    views.FAMILY_WEIGHTS.update({"existence": 1.0})
    images, words = AnswerBatcher(tok, proc, order=a.order), TextBatcher(tok, proc, order=a.order)
    rng, hits = random.Random(0), []
    for step in range(a.steps):
        d = views.sample_views(rng, 24, 0)
        relabel(d, a.task)
        if a.task == "text-existence":
            ids, mask, labels = words(d)
            px = None
        else:
            ids, mask, labels, px = images(d)
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (step + 1) / 50)
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=px).logits[:, :-1]
        loss = answer_loss(logits, (ids, mask, labels), model.config.image_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hits += first_token_hits(logits, labels)
        if (step + 1) % 50 == 0:
            print(f"{a.task} step {step + 1}: loss {loss.item():.3f}, first-token accuracy {sum(hits) / len(hits):.2f}",
                  flush=True)
            hits = []


if __name__ == "__main__":
    main()
