"""Does a testbed model's vision tower put a box's digit on the box's visual tokens?

    python tools/tower_digit_probe.py --model testbed_emergent
    python tools/tower_digit_probe.py --qwen-tower testbed_work/qwen/tower.pt

A linear probe (one `Linear(H, 11)`: digit or "none") is trained for `--steps` steps on the frozen visual
tokens the language model receives (after the projector / merger), per token, on the per-cell digit labels
of generated views (`tools/testbed/views.py`: every cell of a readable box carries its digit); then it is
scored on held-out views of stage 0 (one to three large boxes). Printed: the share of a readable box's
cells whose digit the probe gets right, and the share of boxes with at least one such cell. The language
model reads a box's digit from the tokens of the box it attends to; when most of a box's tokens do not
carry the digit, the symbolic stage's reading does not transfer to images (docs/cross_architecture.md).
`--qwen-tower` takes a Qwen2-VL testbed tower-stage checkpoint (RUN/tower.pt of tools/train_testbed_qwen.py).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from testbed import views  # noqa: E402


def llava_tokens(model_dir: Path):
    """(tokens(views) -> [n, 64, H], H): the projected visual tokens of a shipped LLaVA testbed."""
    from testbed.batching import AnswerBatcher
    from testbed.model import build_processor
    from train_emergent import projected_tokens
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    batcher = AnswerBatcher(None, build_processor(AutoTokenizer.from_pretrained(model_dir)))
    return (lambda d: projected_tokens(model, batcher.pixels(d))), model.config.text_config.hidden_size


def qwen_tokens(checkpoint: Path):
    """(tokens(views) -> [n, (S/8)^2, H], H): the merger outputs of a Qwen2-VL testbed tower checkpoint."""
    from testbed import qwen

    tok = qwen.build_tokenizer()
    model = qwen.build_model(tok).eval()
    model.model.visual.load_state_dict(torch.load(checkpoint, weights_only=False)["modules"]["visual"])
    batcher = qwen.QwenBatcher(tok, qwen.build_processor(tok))

    dim = model.config.text_config.hidden_size

    def tokens(d):
        rows, grid = qwen.patchify(batcher.pixels(d))
        return model.model.visual(rows, grid_thw=grid).pooler_output.view(len(d["pixels"]), -1, dim)

    return tokens, dim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a shipped LLaVA testbed (testbed, testbed_emergent) or its checkpoint folder")
    src.add_argument("--qwen-tower", help="a tower-stage checkpoint of tools/train_testbed_qwen.py")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    if a.model:
        folder = Path(a.model) if Path(a.model).is_dir() else ROOT / "laser/assets" / a.model / "model"
        if not (folder / "config.json").is_file():
            raise SystemExit(f"--model {a.model!r}: no checkpoint in {folder}")
        tokens, dim = llava_tokens(folder)
    else:
        if not Path(a.qwen_tower).is_file():
            raise SystemExit(f"--qwen-tower {a.qwen_tower!r}: no such checkpoint")
        tokens, dim = qwen_tokens(Path(a.qwen_tower))
    rng = random.Random(a.seed)
    probe = torch.nn.Linear(dim, 11)  # a token -> its digit or "none"
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for step in range(a.steps):
        d = views.sample_views(rng, 64, (0, 2)[step % 2], views_per_scene=12)
        with torch.no_grad():
            h = tokens(d)
        loss = F.cross_entropy(probe(h).reshape(-1, 11), torch.from_numpy(d["digit_labels"]).reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = views.sample_views(random.Random(a.seed + 1), 96, 0, views_per_scene=12)
    with torch.no_grad():
        pred = probe(tokens(d)).argmax(-1)
    cells, any_cell = [], []
    for view, digit, mask in zip(d["box_view"], d["box_digit"], d["box_mask"]):
        hit = (pred[view][torch.from_numpy(mask) > 0] == int(digit)).float()
        cells.append(hit.mean().item())
        any_cell.append(hit.max().item())
    labels = torch.from_numpy(d["digit_labels"])
    labelled = (labels >= 0) & (labels < 10)  # cells whose centre lies in a readable box
    right = (pred[labelled] == labels[labelled]).float().mean().item()
    print(f"{int(labelled.sum())} cells inside readable boxes: digit right on {100 * right:.1f}%; {len(cells)} readable "
          f"boxes: right on {100 * sum(cells) / len(cells):.1f}% of a box's cells (mean, edge cells included), on at "
          f"least one cell for {100 * sum(any_cell) / len(any_cell):.1f}% of boxes")


if __name__ == "__main__":
    main()
