"""Does a testbed model use the image? Per decoder layer, for a few questions asked of pairs of scenes:

    python tools/testbed_image_use.py laser/assets/testbed_emergent/model [--pairs 8]

- `img |h|` / `last |h|`: mean norm of the visual tokens' / the last prompt token's hidden state;
- `last diff`: |h_last(scene a) - h_last(scene b)| / |h_last(scene a)|, same question: 0 means the
  answer position carries nothing from the image up to that layer;
- `attn img`: attention mass of the last prompt token on the visual tokens (mean over heads).
Averaged over `--pairs` scene pairs (training-range seeds, not the evaluation splits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testbed.model import prompt  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

from laser.testbed.scenes import make_scene, render_scene  # noqa: E402

QUESTIONS = ("Is there a red box?", "What digit is in the red box?", "What digit is in the box left of the blue box?")


@torch.no_grad()
def profile(model, processor, question: str, pairs: int) -> dict[str, list[float]]:
    rows: dict[str, list[list[float]]] = {"img |h|": [], "last |h|": [], "last diff": [], "attn img": []}
    for k in range(pairs):
        images = [render_scene(make_scene(1000 + 2 * k)), render_scene(make_scene(1001 + 2 * k))]
        inputs = processor(text=[prompt(question)] * 2, images=images, return_tensors="pt", padding=True)
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
        img = inputs["input_ids"][0] == model.config.image_token_id
        hs = out.hidden_states[:-1]  # inputs of each decoder layer
        rows["img |h|"].append([h[0, img].norm(dim=-1).mean().item() for h in hs])
        rows["last |h|"].append([h[0, -1].norm().item() for h in hs])
        rows["last diff"].append([((h[0, -1] - h[1, -1]).norm() / h[0, -1].norm().clamp(min=1e-9)).item() for h in hs])
        rows["attn img"].append([a[:, :, -1][:, :, img].sum(-1).mean().item() for a in out.attentions])
    return {k: torch.tensor(v).mean(0).tolist() for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--pairs", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(a.model, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(a.model)
    n = model.config.text_config.num_hidden_layers
    for q in QUESTIONS:
        print(f"\n{q}\n| layer | " + " | ".join(str(i) for i in range(n)) + " |\n|" + "---|" * (n + 1))
        for key, values in profile(model, processor, q, a.pairs).items():
            print(f"| {key} | " + " | ".join(f"{v:.3g}" for v in values) + " |")


if __name__ == "__main__":
    main()
