"""Short probes of the emergent testbed's language model on *symbolic* views (tools/train_emergent.py,
`symbolic_tokens`: each patch as E[colour] + E[digit] in the LM's own word embeddings) or, with --image, on
the pre-trained tower's tokens: how many steps the LM needs before it finds the box a question names.

    python tools/emergent_symbolic_probes.py --layers 4 --qk-init 4 --fam existence:1.0 --stage 0 --steps 1000

Prints the first-answer-token accuracy on the training batches every 50 steps (per family; reading by target
size; with --turns N, later turns of a conversation with a "+"). Logs of the probes behind docs/testbed.md:
docs/testbed_emergent/attempts/17-symbolic_probes.log. --image needs RUN/last.pt of a tower run (--tower).
"""
import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
import torch
import train_emergent as te
from testbed import views
from testbed.batching import AnswerBatcher, TurnBatcher, answer_starts
from testbed.losses import answer_loss
from testbed.model import build_processor, build_tokenizer
from train_testbed import NAMING_WORDS, question_attention_loss


ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=600); ap.add_argument("--order", default="image-first")
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--qk-init", type=float, default=1.0)
ap.add_argument("--qattn", type=float, default=0.0); ap.add_argument("--stage", default="1")
ap.add_argument("--heads", type=int, default=4); ap.add_argument("--layers", type=int, default=8)
ap.add_argument("--sym-scale", type=float, default=1.0); ap.add_argument("--name", default="p")
ap.add_argument("--phase2-at", type=int, default=10**9); ap.add_argument("--fam2", default=""); ap.add_argument("--stage2", default="q")
ap.add_argument("--image", action="store_true")
ap.add_argument("--tower", default=str(ROOT / "testbed_work/tower/last.pt"))
ap.add_argument("--turns", type=int, default=1)
ap.add_argument("--fam", default="reading:0.7,existence:0.3")
a = ap.parse_args()
torch.set_num_threads(1); torch.manual_seed(0); rng = random.Random(0)
tok = build_tokenizer(); proc = build_processor(tok)
cfg = te.build_config(tok, **te.VIT_ARCH)
cfg.text_config.num_attention_heads = a.heads; cfg.text_config.num_key_value_heads = a.heads
cfg.text_config.head_dim = 96 // a.heads; cfg.text_config.num_hidden_layers = a.layers
from transformers import LlavaForConditionalGeneration

model = LlavaForConditionalGeneration(cfg)
if a.qattn: model.set_attn_implementation("eager")
te.scale_qk(model, a.qk_init)
if a.image:
    st = torch.load(a.tower, weights_only=False)["model"]
    model.model.vision_tower.load_state_dict({k.split("vision_tower.", 1)[1]: v for k, v in st.items() if "vision_tower." in k})
    model.model.vision_tower.requires_grad_(False)
    te.fix_projector_norm(model)
lm_params = [p for n, p in model.named_parameters() if "vision_tower" not in n and ("multi_modal_projector" not in n or a.image)]
opt = torch.optim.AdamW(lm_params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
naming_ids = torch.tensor(tok.convert_tokens_to_ids(list(NAMING_WORDS)))
batcher = AnswerBatcher(tok, proc, order=a.order)
img_id = model.config.image_token_id
fam = {k: float(v) for k, v in (x.split(":") for x in a.fam.split(","))}
turn_batcher = TurnBatcher(tok, proc, order=a.order)


def turn_hits(logits, labels):
    """Per answer of the batch, in order: whether its first token is the argmax."""
    with torch.no_grad():
        start = answer_starts(labels)
        return (logits.argmax(-1)[start] == labels[:, 1:][start]).tolist()


agg = defaultdict(float); t0 = time.time()
stage = a.stage if a.stage == "q" else int(a.stage)
fam2 = {k: float(v) for k, v in (x.split(':') for x in a.fam2.split(','))} if a.fam2 else fam
stage2 = a.stage2 if a.stage2 == 'q' else int(a.stage2)
for step in range(a.steps):
    views.FAMILY_WEIGHTS.clear(); views.FAMILY_WEIGHTS.update(fam if step < a.phase2_at else fam2)
    if step == a.phase2_at: stage = stage2
    if a.turns > 1 and step >= a.phase2_at:
        d = views.sample_turns(rng, 24, stage, turns=a.turns); ids, mask, labels, px, turns = turn_batcher(d)
        fams = [f if t == 0 else f + "+" for f, _, t in turns]; sizes = [size for _, size, _ in turns]
    else:
        d = views.sample_views(rng, 24, stage); ids, mask, labels, px = batcher(d); fams, sizes = d["families"], d["sizes"]
    if a.image:
        x = None
    else:
        x = te.with_symbols(model, ids, te.symbolic_tokens(model, tok, d) * a.sym_scale)
    for gp in opt.param_groups: gp["lr"] = a.lr * min(1, (step + 1) / 100)
    out = model(input_ids=ids if a.image else None, pixel_values=px if a.image else None, inputs_embeds=x, attention_mask=mask, output_attentions=a.qattn > 0)
    logits = out.logits[:, :-1]
    loss = answer_loss(logits, (ids, mask, labels), img_id, 0.5)
    if a.qattn: loss = loss + a.qattn * question_attention_loss(out.attentions, ids, labels, naming_ids, (0,), (2, 3))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(lm_params, 1.0); opt.step()
    for f, size, hit in zip(fams, sizes, turn_hits(logits, labels)):
        k = f if not f.startswith("reading") else f"read{f[7:]}-{size}"
        agg["a_" + k] += hit; agg["n_" + k] += 1
    agg["loss"] += loss.item(); agg["n"] += 1
    if (step + 1) % 50 == 0:
        print(a.name, step + 1, f"loss {agg['loss']/agg['n']:.3f}", " ".join(f"{k[2:]}={agg[k]/agg['n_'+k[2:]]:.2f}" for k in sorted(agg) if k.startswith("a_")), f"{(time.time()-t0)/50:.2f}s/step", flush=True)
        agg.clear(); t0 = time.time()
