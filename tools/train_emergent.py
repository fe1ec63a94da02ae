"""Train the *emergent* testbed LVLM: grounding from the answer loss alone (step-driven, seeded, resumable).

    python tools/train_emergent.py --run testbed_work/emergent --patch-digit 1.0

rebuilds `laser/assets/testbed_emergent/model` (the `model=testbed_emergent` preset) from nothing:
same seed, same steps, same model (one thread); the LR schedules and the curricula follow the step
count, never the clock. Re-running the same command resumes from RUN/last.pt (written every
`--ckpt-every` steps); the model is exported to `--export` every `--export-every` steps and at the end,
with the command line in `training_commands.txt`.

Four stages (the default `--tower vit`, the shipped checkpoint):
1. The vision tower alone (`vision_pretrain` of tools/train_testbed.py, `--vision-steps`): the testbed's
   3-layer CLIP ViT learns per-patch colour, per-patch digit (`--patch-digit`) and box-pooled digit labels
   of generated views — a pre-trained backbone, trained without the language model and without any
   question. It is then frozen.
2. The symbolic stage (`--symbol-steps`): a 4-layer Llama from scratch, on the answer loss (and, with weight
   `--prompt-loss`, the next-token loss on the prompt's text), where each view's 64 visual tokens are its
   labels written as the LM's own word embeddings (`symbolic_tokens`: E[colour] + E[digit] of the box under
   each patch, the digit only where the box is readable, zero on the background). First existence
   questions about one or two boxes (`--symbol-existence`: no scene prior answers them), then every family
   on the curriculum below, `--turns` questions per view in one LLaVA-1.5 conversation (the same pixels,
   different boxes, different answers). Here the LM learns to find the box a question names, on tokens it
   can match to the question's words; no attention loss and no label of where to look.
3. Token alignment (`--token-align-steps`): the projector alone learns to map the frozen tower's features
   onto the symbolic tokens (mean squared error per patch, the LM unused) — LLaVA's first stage, with
   per-patch targets instead of captions.
4. The image stage (`--steps`): the projector and the LM on real images, answer + prompt loss, conversations
   of `--turns` questions, the token-alignment loss kept (`--token-align`), and every `--symbol-every`-th
   step a symbolic one.
The image comes before the question (LLaVA-1.5's prompt), so the visual tokens are computed without the
question; only the question / answer positions can pick the box the question names, by attending to it.

Without stages 2-3 (the earlier recipes, `--symbol-steps 0 --turns 1`, logs in docs/testbed_emergent/attempts/)
the LM never came to read the question. Short probes (tools/emergent_symbolic_probes.py, docs/testbed.md)
show the match of a colour word to the visual tokens of that colour learned after a plateau on symbolic
tokens, sooner in a 4-layer LM than in an 8-layer one, and not within 800 steps on the tower's own tokens.

`--tower patch` is the per-patch variant of the ten earliest runs (docs/testbed_emergent/attempts/ 1-10):
each visual token is the CLIP tower's embedding of its own 8x8 patch (`build_emergent`,
`content_only_tokens`, background-centred pixels `IMAGE_MEAN`), trained with the LM on the answer loss
alone; its answers never came to depend on the image.

Model: `LlavaForConditionalGeneration`, 64 px input, patch 8 -> 8x8 visual tokens, 4-layer Llama
(hidden 96, 4 heads; query/key weights initialised at `--qk-init` x the default), the word-level tokenizer
of `tools/testbed/model.py`; without the symbolic stage, the projector's weights keep their initial norms
during training (`fix_projector_norm`).
Data: `tools/testbed/views.py` (random zooms of generated scenes, training seeds < 10,000,000; the
evaluation splits use seeds >= 10,000,000). Curriculum by step: stage 0 (one or two big boxes) first,
then stages 0/1/2 mixed, then mostly stage 2 (the evaluation distribution).
Every `--eval-every` steps the first answer token is scored on questions of the dev split (generator
seed 1, `testbed_work/splits/seed1`), full scene and tight oracle crop; logged, not used to pick a model
(the export is the last step's).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.nn.utils.parametrize as parametrize  # noqa: E402
from testbed import views  # noqa: E402
from testbed.batching import AnswerBatcher, TextBatcher, TurnBatcher, answer_starts  # noqa: E402
from testbed.losses import answer_loss, first_token_hits  # noqa: E402
from testbed.model import TEMPLATES, build_config, build_processor, build_tokenizer, prompt  # noqa: E402
from testbed.quick_eval import first_token_eval  # noqa: E402
from train_testbed import NAMING_WORDS, question_attention_loss, vision_pretrain  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402

from laser.testbed.scenes import COLOR_NAMES  # noqa: E402
from laser.testbed.split import load_split, materialize_split  # noqa: E402

EXPORT = ROOT / "laser/assets/testbed_emergent/model"
ARCH = dict(text_hidden=96, text_layers=8, vision_hidden=192)
# the "vit" tower: the shipped testbed's 3-layer CLIP ViT, pre-trained alone and then frozen
VIT_ARCH = dict(text_hidden=96, text_layers=4, vision_hidden=96, vision_layers=3)
FAMILY_WEIGHTS = {"reading": 0.45, "relational": 0.2, "existence": 0.14, "color": 0.07, "count": 0.05, "where": 0.09}
# the first EARLY_SHARE of the steps: more existence / where questions, which need the image but no digit
# reading (finding the box the question names is the skill every family shares)
FAMILY_WEIGHTS_EARLY = {"reading": 0.3, "relational": 0.05, "existence": 0.35, "color": 0.05, "count": 0.1, "where": 0.15}
EARLY_SHARE = 0.25
# the text stage (`--text-steps`): the families a view in words answers ("red 3 , blue 7" has no positions)
CAPTION_QUESTION = "What boxes are there?"
TEXT_FAMILIES = {"reading": 0.5, "existence": 0.25, "color": 0.15, "count": 0.1}
DEV_SEED = 1  # generator seed of the dev split (the shipped split is seed 0)
# the token-alignment MSE is taken on word embeddings of std 0.02: scaled so its gradients compare with the answer loss's
TOKEN_ALIGN_SCALE = 100.0
IMAGE_GAIN = 1.0  # fixed pre-LayerNorm gain of the vision tower
# pixel normalisation centred on the scenes' grey background (base 195-235) instead of CLIP's statistics:
# the background then maps near zero and a patch's token is dominated by what is drawn in it
IMAGE_MEAN, IMAGE_STD = [0.84, 0.84, 0.84], [0.25, 0.25, 0.25]


def build_vit(tok) -> LlavaForConditionalGeneration:
    """The "vit" tower variant: the testbed's 3-layer CLIP ViT (tokens mix across the image) under the
    same 8-layer LM. Its tower is pre-trained alone (`vision_pretrain`: per-patch colour and box-pooled
    digit labels, no language model, no question) and frozen before the LM is trained on answers only."""
    model = LlavaForConditionalGeneration(build_config(tok, **VIT_ARCH))
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model


def build_emergent(tok) -> LlavaForConditionalGeneration:
    """The per-patch LLaVA: visual tokens are the CLIP tower's *embedding* output (hidden state 0 of 2,
    selected by `vision_feature_layer=-2`), i.e. conv-patch + position embedding + pre-LayerNorm, one
    patch each. The CLIP tower keeps one encoder layer only because transformers' LLaVA selects the
    feature from the tower's captured hidden states, which a zero-layer tower does not produce (and
    `vision_feature_layer=0` is read as "no hidden states"); that layer's output is never used, so it
    is kept minimal (MLP width 8) and its weights get no gradient.
    """
    cfg = build_config(tok, vision_layers=1, **ARCH)
    cfg.multimodal_projector_bias = False
    cfg.vision_feature_layer = -2
    cfg.vision_config.intermediate_size = 8
    model = LlavaForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model


class FixedNorm(torch.nn.Module):
    """Weight parametrization w -> w * norm / ||w||: the projector keeps its initial Frobenius norm."""

    def __init__(self, norm: float):
        super().__init__()
        self.norm = norm

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (self.norm / weight.norm())


def fix_projector_norm(model) -> None:
    """During training only: without it the projector's output grew to ~170x the text embeddings' norm
    within 600 steps (57 vs 0.33), the image tokens became constant attention sinks and the answers did
    not depend on the image at all (first-token accuracy identical on full scenes and oracle crops)."""
    proj = model.model.multi_modal_projector
    for linear in (proj.linear_1, proj.linear_2):
        parametrize.register_parametrization(linear, "weight", FixedNorm(float(linear.weight.norm())))


def symbolic_tokens(model, tok, d: dict) -> torch.Tensor:
    """[n, g*g, H]: each patch of each view as the LM's own word embeddings, E[colour] + E[digit] of the box
    under the patch centre (`views._patch_labels`: the colour of any box in view, the digit only where the box
    is readable), zero on the background. The symbolic stage's visual tokens and the token-alignment target."""
    emb = model.get_input_embeddings().weight
    colour_ids = torch.tensor(tok.convert_tokens_to_ids(list(COLOR_NAMES)))
    digit_ids = torch.tensor(tok.convert_tokens_to_ids([str(i) for i in range(10)]))
    colour, digit = torch.from_numpy(d["color_labels"]), torch.from_numpy(d["digit_labels"])
    out = torch.zeros(*colour.shape, emb.size(1), dtype=emb.dtype)
    has_colour, has_digit = colour < len(COLOR_NAMES), (digit >= 0) & (digit < 10)
    out[has_colour] = out[has_colour] + emb[colour_ids[colour[has_colour]]]
    out[has_digit] = out[has_digit] + emb[digit_ids[digit[has_digit]]]
    return out


def with_symbols(model, ids: torch.Tensor, symbols: torch.Tensor) -> torch.Tensor:
    """inputs_embeds [B, T, H] of `ids` with the image tokens' rows replaced by `symbols` [B, g*g, H]."""
    x = model.get_input_embeddings()(ids)
    return x.masked_scatter((ids == model.config.image_token_id)[..., None].expand_as(x), symbols.to(x.dtype))


def projected_tokens(model, px: torch.Tensor) -> torch.Tensor:
    """[B, g*g, H]: the visual tokens the LM receives for pixel values px [B, 3, S, S] (tower, then projector)."""
    feats = model.model.get_image_features(pixel_values=px, return_dict=True).pooler_output
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def scale_qk(model, factor: float) -> None:
    """Multiply the LM's query and key projections at initialisation by `factor`: attention logits start
    larger, so a content match between a question's words and the visual tokens is found sooner (the
    plateau of a 4-layer LM from scratch before it finds the box a question names)."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)


def content_only_tokens(model) -> None:
    """Visual tokens that carry their patch's content and nothing the model can make constant: the CLIP
    position embedding is fixed at zero (the LM's rotary positions still order the 8x8 tokens) and the
    pre-LayerNorm is fixed at gain `IMAGE_GAIN`, bias 0; all excluded from training.

    Why: with these trainable, training made the visual tokens nearly image-independent (after 1,200
    steps the difference between two scenes' tokens had fallen from 50% of their norm at initialisation
    to 16%), the LM grew them into attention sinks (token norms 14 -> 620 through the layers) and its
    answers did not depend on the image at all. These fixes did not make the model use it either (README)."""
    tower = model.model.vision_tower
    fixed = (tower.pre_layrnorm.weight, tower.pre_layrnorm.bias, tower.embeddings.position_embedding.weight,
             tower.embeddings.class_embedding)
    with torch.no_grad():
        tower.pre_layrnorm.weight.fill_(IMAGE_GAIN)
        tower.pre_layrnorm.bias.zero_()
        tower.embeddings.position_embedding.weight.zero_()
    for p in fixed:
        p.requires_grad_(False)


def plain_copy(model, tok):
    """A fresh model holding `model`'s weights with the projector parametrizations folded in (exported)."""
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    proj = model.model.multi_modal_projector
    for name in ("linear_1", "linear_2"):
        state[f"model.multi_modal_projector.{name}.weight"] = getattr(proj, name).weight.detach().clone()
    out = BUILDERS[TOWER](tok)
    out.load_state_dict(state)
    return out


BUILDERS = {"patch": build_emergent, "vit": build_vit}
TOWER = "patch"  # set by --tower


def stage_at(step: int, total: int):
    """Curriculum by step: stage 0 alone, then 0/1/q mixed, then mostly the evaluation scenes framed so
    that the question decides (stage "q") and the evaluation distribution (stage 2)."""
    p = step / total
    if p < 0.12:
        return 0
    if p < 0.3:
        return (0, 1, "q")[step % 3]
    return (1, "q", 2, "q")[step % 4]


def text_stage_at(step: int, text_steps: int):
    """The text stage's views: one to three boxes (short descriptions) first, then the evaluation scenes;
    in the image stage's text steps, the evaluation scenes."""
    if step < 0.4 * text_steps:
        return 0
    return (1, 2, "q")[step % 3]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def dev_records(n: int) -> tuple[list[dict], Path]:
    root = ROOT / "testbed_work/splits" / f"seed{DEV_SEED}"
    if not (root / "eval.jsonl").exists():
        materialize_split(root, seed=DEV_SEED)
    recs = load_split(root / "eval.jsonl")
    return recs[:n], root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "testbed_work/emergent"))
    ap.add_argument("--export", default=str(EXPORT))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop (checkpoint and export) after this step of the --steps schedule")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--export-every", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=600)
    ap.add_argument("--eval-n", type=int, default=240, help="dev questions scored at each eval")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--prompt-loss", type=float, default=0.5,
                    help="weight of the next-token loss on the prompt's text (the question included)")
    ap.add_argument("--tower", choices=sorted(BUILDERS), default="vit",
                    help="patch: per-patch tokens, trained with the LM; vit: pre-trained (--vision-steps) then frozen")
    ap.add_argument("--vision-steps", type=int, default=3000, help="tower pre-training steps (--tower vit)")
    ap.add_argument("--patch-digit", type=float, default=0.0,
                    help="weight of the tower's per-patch digit loss in pre-training (--tower vit): each patch "
                         "token then carries its box's colour and digit, and one attention hop can read it")
    ap.add_argument("--question-attn", type=float, default=0.0,
                    help="weight of the text-only question-attention loss of tools/train_testbed.py: the last prompt "
                         "token reads the question's words naming the box (no label of where to look in the image)")
    ap.add_argument("--question-attn-layers", default="0", help="LM layers that loss supervises")
    ap.add_argument("--question-attn-heads", default="2,3", help="heads (in each of those layers) it supervises")
    ap.add_argument("--freeze-projector", action="store_true",
                    help="keep the projector at its random initialisation: trained, it dropped the colour of the "
                         "visual tokens (a linear probe reads a box's colour from 24%% of its tokens after the trained "
                         "projector, 84%% after the initial one, 97%% from the tower), so no question could name a box")
    ap.add_argument("--prompt-order", choices=sorted(TEMPLATES), default="image-first",
                    help="question-first: the visual tokens are computed after the question, so each can compare its "
                         "own colour with the one the question names (LLaVA's instruction data has both orders)")
    ap.add_argument("--tower-from", default=None,
                    help="a RUN/last.pt of an earlier run with the same --seed, --vision-steps and --patch-digit: take its "
                         "pre-trained tower instead of pre-training again (the LM stage is seeded on its own, so the "
                         "result is the one of a full run)")
    ap.add_argument("--text-steps", type=int, default=0,
                    help="steps of a text stage before the image stage: the LM alone, each view given in words where its "
                         "image tokens would be (\"red 3 , blue 7\"), the same questions and answer loss; an LM from "
                         "scratch learns there, from text, to find the box a question names (at 64 px it did not, from images)")
    ap.add_argument("--caption-share", type=float, default=0.0,
                    help=f"share of image-stage questions replaced by {CAPTION_QUESTION!r}, answered with the view in "
                         "words (\"red 3 , blue -\": digits where readable), as LLaVA's captioning stage")
    ap.add_argument("--align-steps", type=int, default=0,
                    help="after the text stage, steps of captions only in which the projector alone is trained (the "
                         "LM frozen), as LLaVA's first stage: the visual tokens must land where the LM reads words")
    ap.add_argument("--text-every", type=int, default=0,
                    help="in the image stage, every N-th step is a text step (0: none)")
    ap.add_argument("--symbol-steps", type=int, default=3000,
                    help="steps of the symbolic stage before the image stage: the LM alone, each view's visual tokens "
                         "replaced by its labels as the LM's word embeddings (E[colour] + E[digit] per patch, "
                         "`symbolic_tokens`), the answer loss only; the LM learns to find the box a question names on "
                         "tokens it can match to words, then the projector learns to produce such tokens")
    ap.add_argument("--symbol-existence", type=float, default=0.15,
                    help="share of the symbolic stage spent first on existence questions about views of one or two "
                         "boxes (no digit prior answers them: only matching the colour word to the tokens does)")
    ap.add_argument("--token-align-steps", type=int, default=400,
                    help="after the symbolic stage: the projector alone learns to map the frozen tower's features to "
                         "the symbolic tokens (mean squared error per patch; the LM is not used)")
    ap.add_argument("--symbol-every", type=int, default=4,
                    help="in the image stage, every N-th step is a symbolic step (0: none)")
    ap.add_argument("--token-align", type=float, default=0.5,
                    help="weight of the per-patch token-alignment loss on the image stage's steps")
    ap.add_argument("--turns", type=int, default=3,
                    help="questions per view (one LLaVA-1.5 conversation) in the symbolic and image stages, after "
                         "the existence warm-up; 1: one question per view")
    ap.add_argument("--tower-lr", type=float, default=0.0,
                    help="in the image stage, train the pre-trained tower too, at this multiple of the LM's learning "
                         "rate (0: frozen); the token-alignment loss keeps its features where the LM reads them")
    ap.add_argument("--readable-min", type=float, default=views.READABLE_MIN,
                    help="smallest box side (px at the model input) whose digit is labelled: tower pre-training, "
                         "symbolic tokens and token alignment")
    ap.add_argument("--qk-init", type=float, default=4.0, help="scale of the LM's query/key weights at initialisation")
    a = ap.parse_args()
    global TOWER
    TOWER = a.tower
    views.READABLE_MIN = a.readable_min
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    logf = (run / "train.log").open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    def set_families(step: int) -> None:
        weights = FAMILY_WEIGHTS_EARLY if step < EARLY_SHARE * a.steps else FAMILY_WEIGHTS
        views.FAMILY_WEIGHTS.clear()
        views.FAMILY_WEIGHTS.update(weights)

    torch.manual_seed(a.seed)
    tok = build_tokenizer()
    proc = build_processor(tok)
    model = BUILDERS[TOWER](tok)
    rng = random.Random(a.seed)
    ck = run / "last.pt"
    if TOWER == "patch":
        proc.image_processor.image_mean, proc.image_processor.image_std = IMAGE_MEAN, IMAGE_STD
        content_only_tokens(model)
    elif not ck.exists() and a.tower_from:
        state = torch.load(a.tower_from, weights_only=False)["model"]
        tower = {k.split("vision_tower.", 1)[1]: v for k, v in state.items() if "vision_tower." in k}
        model.model.vision_tower.load_state_dict(tower)
        log(f"tower from {a.tower_from} ({len(tower)} tensors)")
    elif not ck.exists():  # the vit tower: pre-train it alone (its own optimiser and heads), then freeze it
        vh = model.config.vision_config.hidden_size
        heads = torch.nn.ModuleDict({"digit": torch.nn.Linear(vh, 11), "color": torch.nn.Linear(vh, len(COLOR_NAMES) + 1),
                                      "box_digit": torch.nn.Linear(vh, 10)})
        vision_pretrain(model, heads, rng, a.vision_steps, log, patch_digit=a.patch_digit)
    # the LM stage has its own seed: a run that takes its tower from another (--tower-from) gives the same model
    torch.manual_seed(a.seed + 1)
    rng = random.Random(a.seed + 1)
    scale_qk(model, a.qk_init)
    if a.symbol_steps == 0:  # with the symbolic stage, the token-alignment loss holds the projector's scale
        fix_projector_norm(model)
    if a.question_attn > 0:
        model.set_attn_implementation("eager")  # attention rows for the question-attention loss (export: sdpa)
    q_layers = tuple(int(x) for x in a.question_attn_layers.split(","))
    q_heads = tuple(int(x) for x in a.question_attn_heads.split(","))
    naming_ids = torch.tensor(tok.convert_tokens_to_ids(list(NAMING_WORDS)))
    if TOWER == "vit":
        model.model.vision_tower.requires_grad_(False)
    if a.freeze_projector:
        model.model.multi_modal_projector.requires_grad_(False)
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and ".encoder.layers." not in n and "post_layernorm" not in n]
    groups = [{"params": params, "lr_scale": 1.0}]
    if a.tower_lr > 0:  # the image stage's steps only (the other stages clear the tower's gradients)
        tower_params = list(model.model.vision_tower.parameters())
        for p in tower_params:
            p.requires_grad_(True)
        groups.append({"params": tower_params, "lr_scale": a.tower_lr})
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step = 0
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step = st["step"]
        log(f"resumed from step {step}")
    else:
        log(f"new run: {json.dumps(vars(a))}; arch {VIT_ARCH if TOWER == 'vit' else ARCH}; params {sum(p.numel() for p in params)}")

    def save_ckpt() -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "step": step, "args": vars(a)}, run / "tmp.pt")
        (run / "tmp.pt").replace(ck)

    def export() -> None:
        plain_copy(model, tok).save_pretrained(a.export, safe_serialization=True)
        proc.save_pretrained(a.export)
        (Path(a.export) / "training_commands.txt").write_text("python tools/train_emergent.py " + shlex.join(sys.argv[1:]) + "\n")
        log(f"exported step {step} to {a.export}")

    held, held_root = dev_records(a.eval_n)

    def evaluate() -> None:
        model.eval()
        res = first_token_eval(model, proc, held, held_root, batch=48,
                               prompt_fn=lambda q: prompt(q, order=a.prompt_order))
        model.train()
        for view, accs in res.items():
            log(f"dev step {step} {view}: " + " ".join(f"{k}={v[0]:.2f}({v[1]})" for k, v in sorted(accs.items())))

    batcher = AnswerBatcher(tok, proc, order=a.prompt_order)
    turn_batcher = TurnBatcher(tok, proc, order=a.prompt_order)
    text_batcher = TextBatcher(tok, proc, order=a.prompt_order)
    agg: dict[str, float] = defaultdict(float)
    model.train()
    t0 = time.time()
    pre_image = a.text_steps + a.symbol_steps + a.token_align_steps  # steps before LLaVA's stages
    total = pre_image + a.align_steps + a.steps
    last = min(total, a.stop_at or total)
    projector = {id(p) for p in model.model.multi_modal_projector.parameters()}
    captured: dict[str, torch.Tensor] = {}
    model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o))

    def keep_only(ids_kept: set[int]) -> None:
        for p in trained:
            if id(p) not in ids_kept:
                p.grad = None

    while step < last:
        s = step - pre_image  # step after the pre-image stages (negative: one of them)
        sym_local = step - a.text_steps  # step of the symbolic stage, when in it
        in_symbol = 0 <= sym_local < a.symbol_steps
        in_token_align = a.symbol_steps <= sym_local and s < 0
        align = 0 <= s < a.align_steps  # LLaVA's stage 1: captions only, the projector alone learns
        si = s - a.align_steps  # step of the image stage
        text_step = step < a.text_steps or (si >= 0 and a.text_every > 0 and si % a.text_every == a.text_every - 1)
        symbol_step = in_symbol or (si >= 0 and a.symbol_every > 0 and si % a.symbol_every == a.symbol_every - 1)
        turns, kind = None, ""
        if text_step:  # the view in words where its image tokens would be: the LM alone
            views.FAMILY_WEIGHTS.clear()
            views.FAMILY_WEIGHTS.update(TEXT_FAMILIES)
            d = views.sample_views(rng, a.batch, text_stage_at(step, a.text_steps))
            ids, mask, labels = text_batcher(d)
            # the text stage at a constant rate after warm-up (recall appears after a plateau), then the image stage's
            px, lr = None, a.lr * min(1.0, (step + 1) / a.warmup) if s < 0 else lr_at(si, a.steps, a.lr, a.warmup)
            kind = "text-"
        elif symbol_step:  # the view's labels as word embeddings where its image tokens would be
            if in_symbol and sym_local < a.symbol_existence * a.symbol_steps:
                views.FAMILY_WEIGHTS.clear()
                views.FAMILY_WEIGHTS.update({"existence": 1.0})
                d = views.sample_turns(rng, a.batch, 0, turns=1)
            else:
                set_families(max(si, 0) if not in_symbol else sym_local * a.steps // max(1, a.symbol_steps))
                d = views.sample_turns(rng, a.batch, stage_at(sym_local, a.symbol_steps) if in_symbol else
                                       stage_at(si, a.steps), turns=a.turns)
            ids, mask, labels, px, turns = turn_batcher(d)
            px = None
            lr = a.lr * min(1.0, (sym_local + 1) / a.warmup) if in_symbol else lr_at(si, a.steps, a.lr, a.warmup)
            kind = "sym-"
        elif in_token_align:  # the projector alone: the tower's features onto the symbolic tokens
            d = views.sample_turns(rng, a.batch, (1, 2, "q")[step % 3], turns=1)
            ids, mask, labels, px, turns = turn_batcher(d)
            lr = a.lr
        else:
            set_families(max(si, 0))
            if align or a.caption_share > 0:  # the earlier recipes' one question per view (captions)
                d = views.sample_views(rng, a.batch, (1, 2, "q")[step % 3] if align else stage_at(si, a.steps))
                share = 1.0 if align else a.caption_share
                for i in range(len(d["questions"])):
                    if align or rng.random() < share:
                        d["questions"][i], d["answers"][i], d["families"][i] = CAPTION_QUESTION, d["caption"][i], "caption"
                ids, mask, labels, px = batcher(d)
            else:
                d = views.sample_turns(rng, a.batch, stage_at(si, a.steps), turns=a.turns)
                ids, mask, labels, px, turns = turn_batcher(d)
            lr = a.lr * min(1.0, (s + 1) / a.warmup) if align else lr_at(si, a.steps, a.lr, a.warmup)
        t_data = time.time()
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        if in_token_align:
            tokens = projected_tokens(model, px)
            loss = F.mse_loss(tokens, symbolic_tokens(model, tok, d).detach()) * TOKEN_ALIGN_SCALE
            opt.zero_grad(set_to_none=True)
            loss.backward()
            keep_only(projector)
        else:
            if symbol_step:
                out = model(inputs_embeds=with_symbols(model, ids, symbolic_tokens(model, tok, d)), attention_mask=mask)
            else:
                out = model(input_ids=ids, attention_mask=mask, pixel_values=px,
                            output_attentions=a.question_attn > 0 and not text_step)
            logits = out.logits[:, :-1]
            loss = answer_loss(logits, (ids, mask, labels), model.config.image_token_id, 0.0 if text_step else a.prompt_loss)
            if a.question_attn > 0 and not (text_step or symbol_step):
                loss = loss + a.question_attn * question_attention_loss(out.attentions, ids, labels, naming_ids, q_layers, q_heads)
            if a.token_align > 0 and px is not None and a.symbol_steps > 0:
                target = symbolic_tokens(model, tok, d).detach()
                loss = loss + a.token_align * F.mse_loss(captured["tokens"], target) * TOKEN_ALIGN_SCALE
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if align:  # the language model keeps what the text stage taught it
                keep_only(projector)
            if symbol_step:  # no image was used: the projector keeps what it learned
                keep_only({id(p) for p in params} - projector)
        torch.nn.utils.clip_grad_norm_([p for p in trained if p.grad is not None], 1.0)
        opt.step()
        step += 1
        if in_token_align:
            agg["align_mse"] += loss.item() / TOKEN_ALIGN_SCALE
        elif turns is not None:
            starts = answer_starts(labels)
            hits = (logits.argmax(-1)[starts] == labels[:, 1:][starts]).tolist()
            for (fam, size, t), hit in zip(turns, hits):
                name = f"{kind}{'read-' + size if fam == 'reading' else fam}{'+' if t else ''}"
                agg[f"acc_{name}"] += hit
                agg[f"n_{name}"] += 1
        else:
            for fam, size, hit in zip(d["families"], d["sizes"], first_token_hits(logits, labels)):
                name = f"{kind}{'read-' + size if fam == 'reading' and not text_step else fam}"
                agg[f"acc_{name}"] += hit
                agg[f"n_{name}"] += 1
        agg["loss"] += loss.item()
        agg["data_s"] += t_data - t0
        agg["step_s"] += time.time() - t0
        agg["n"] += 1
        t0 = time.time()
        if step % a.log_every == 0:
            n = agg["n"]
            accs = " ".join(f"{k[4:]}={agg[k] / agg['n_' + k[4:]]:.2f}" for k in sorted(agg) if k.startswith("acc_"))
            mse = f" mse {agg['align_mse'] / n:.2e}" if agg["align_mse"] else ""
            where = ("text" if step < a.text_steps else "symbolic" if in_symbol else "token-align" if in_token_align
                     else "align" if align else f"image stage {stage_at(si, a.steps)}")
            log(f"step {step}/{last} {where} lr {lr:.2e} loss {agg['loss'] / n:.3f}{mse} train[{accs}] "
                f"{agg['step_s'] / n:.2f}s/step (data {agg['data_s'] / n:.2f})")
            agg.clear()
        if step % a.ckpt_every == 0 or step == last:
            save_ckpt()
        if s >= 0 and (step % a.eval_every == 0 or step == last):
            evaluate()
        if s >= 0 and (step % a.export_every == 0 or step == last):
            export()
        t0 = time.time()
    log("done")


if __name__ == "__main__":
    main()
