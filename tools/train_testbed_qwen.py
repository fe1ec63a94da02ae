"""Train the Qwen2-VL testbed LVLM with the emergent recipe (step-driven, seeded, resumable).

    python tools/train_testbed_qwen.py --run testbed_work/qwen

rebuilds `laser/assets/testbed_qwen/model` (the `model=testbed_qwen` preset) from nothing: same seed, same
steps, same model (one thread); learning rates, curricula and the resolution schedule follow the step
count, never the clock. Re-running the same command resumes where it stopped: each stage checkpoints to
RUN/<stage>.pt every `--ckpt-every` steps and when it ends, and a run stopped and resumed ends with the
weights of one uninterrupted run. The model is exported to `--export` every `--export-every` image steps
and at the end, with the command line in `training_commands.txt`.

The recipe of tools/train_emergent.py (the `testbed_emergent` LLaVA), for a second architecture, with one
difference: the LM starts from a trained LM, as a real LVLM's does (`--lm-from`: the shipped `testbed_emergent`'s
4-layer LM, trained itself with no attention loss; Qwen2's query/key/value biases start at zero). On text
alone mrope is the 1D rotary embedding that LM was trained with; the image's tokens get new 2D positions,
which the symbolic stage teaches it. From scratch (`--lm-from ''`), the LM's symbolic stage stalled (large-box
reading 0.74-0.83 after 5,000 steps, where the LLaVA's reached 0.98 in 3,000) and the image stage learned to
answer from the largest box (at most 49.7% of pairs answered differently; docs/cross_architecture.md). Four
stages; each starts from the seeded initial model and the outputs of the stages it needs, with its own seed:
1. `tower` (`--vision-steps`): the vision tower and the patch merger alone, heads on the visual tokens
   learning per-token colour, per-token digit and box-pooled digit labels of generated views (`vision_aux` of
   tools/train_testbed.py); no language model, no question. The patch embedding and blocks are then frozen.
2. `symbolic` (`--symbol-steps`): the LM alone, each view's visual tokens replaced by its labels as
   the LM's own word embeddings (`symbolic_tokens` of tools/train_emergent.py: E[colour] + E[digit] of the
   box under each 8 px cell), at Qwen2-VL's multimodal rotary positions of the image's token grid. First
   existence questions about one or two boxes (`--symbol-existence`), then every family, `--turns` questions
   per view in one conversation. The LM learns to find the box a question names; no attention loss, no
   label of where to look.
3. `align` (`--token-align-steps`, `--align-lr`): the merger alone, its MLP re-initialised (as LLaVA's
   projector starts fresh), maps the frozen tower's features onto the symbolic tokens (mean squared error per
   visual token; the LM unused). Kept from the tower stage, the MLP's outputs start ~1000x the aligned error
   away and a 400-step stage left the digit decodable from 17% of the aligned tokens of readable boxes; a
   fresh MLP and 1,500 steps at 3e-3: 58-65% (the shipped LLaVA `testbed_emergent`: 73%).
4. `image` (`--steps`): the merger and the LM on real images (the tower frozen, `--tower-lr` 0), answer +
   prompt loss, `--turns`-question conversations, the token-alignment loss kept (`--token-align`), every
   `--symbol-every`-th step symbolic.
`tower` and `symbolic` need nothing but the initial model: `--stages tower` and `--stages symbolic` may run
at once in two processes (one core each); the plain command then goes on from their checkpoints.

Model (`tools/testbed/qwen.py`): `Qwen2VLForConditionalGeneration`, a 3-layer vision tower (8 px patches,
embed 96, 2D rotary), the patch merger (Qwen2-VL's projector; merge size 1, one patch per visual token) and a
4-layer Qwen2 LM (hidden 96, 4 heads of 24: mrope_section [4, 4, 4]; from scratch, query/key weights
initialised at `--qk-init` x the default); the word-level
tokenizer of `tools/testbed/model.py` with Qwen2-VL's special tokens, and the exact prompt of
`adapters/qwen_vl.py` (system prompt, image, question, instruction).

Resolution. A 64 px image is 8x8 = 64 visual tokens (the processor's default `max_pixels` = 64*64, like the
LLaVA testbed's 8x8 grid); `max_pixels` = 128*128 gives 16x16 = 256 tokens, where a small box
spans 2x as many pixels. So that the model can use them, every `--hires-every`-th step of the tower, align
and image stages uses views rendered at 128 px (`size=128`; fewer views per step, about the same pixels and LM
tokens); the symbolic steps stay at 64 px (`--symbol-hires-every` 0). Labels are
per visual token: one cell per 8x8 px of the view on an (S/8) x (S/8) grid, row-major, the visual tokens'
order; readable-box and size thresholds are in pixels of the view as rendered.

Every `--eval-every` image steps the first answer token is scored on questions of the dev split (generator
seed 1): full scene and tight oracle crop at 64*64 pixels, and the full scene at 128*128 ("full@128").
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from testbed import qwen, views  # noqa: E402
from testbed.batching import answer_starts  # noqa: E402
from testbed.losses import answer_loss  # noqa: E402
from testbed.quick_eval import first_token_eval  # noqa: E402
from testbed.qwen import HIRES, QwenBatcher, patchify  # noqa: E402
from train_emergent import (  # noqa: E402
    EARLY_SHARE,
    FAMILY_WEIGHTS,
    FAMILY_WEIGHTS_EARLY,
    TOKEN_ALIGN_SCALE,
    lr_at,
    scale_qk,
    stage_at,
    symbolic_tokens,
)
from train_testbed import vision_aux  # noqa: E402
from transformers.modeling_outputs import BaseModelOutputWithPooling  # noqa: E402

from laser.testbed.scenes import COLOR_NAMES, MODEL_INPUT  # noqa: E402
from laser.testbed.split import DEFAULT_SCENES, load_split, materialize_split  # noqa: E402

EXPORT = ROOT / "laser/assets/testbed_qwen/model"
DEV_SEED = 1
SCRIPT = "tools/train_testbed_qwen.py"
# the question families of the tower and align stages' views: `views`' own (the symbolic and image stages set
# theirs at every step; without setting these, a stage that followed the symbolic stage in one process drew
# other views than one started in a new process)
VIEW_FAMILIES = dict(views.FAMILY_WEIGHTS)
STAGES = ("tower", "symbolic", "align", "image")
# the finished stages whose weights a stage starts from, loaded in this order (align's merger over the tower's)
# arguments that do not change what a stage trains (a stage resumed with any other argument changed is refused)
PLUMBING = {"run", "export", "stages", "max_steps_now", "threads", "ckpt_every", "export_every",
            "eval_every", "eval_n", "dev_root", "dev_scenes", "log_every"}
INPUTS = {"tower": (), "symbolic": (), "align": ("tower", "symbolic"), "image": ("tower", "symbolic", "align")}


def vision_stage_at(frac: float):
    """`vision_pretrain`'s curriculum: grid-aligned warm-up, then stage 0, then the evaluation scenes."""
    return "a0" if frac < 0.3 else ("a1" if frac < 0.55 else (0 if frac < 0.8 else 2))


def dev_records(root: Path, n: int, n_scenes: int) -> list[dict]:
    if not (root / "eval.jsonl").exists():
        materialize_split(root, n_scenes=n_scenes, seed=DEV_SEED)
    return load_split(root / "eval.jsonl")[:n]


def trained_modules(model, stage: str, train_tower: bool = False) -> dict[str, torch.nn.Module]:
    """The modules a stage trains (and checkpoints): the whole visual part in `tower`, the LM in `symbolic`,
    the merger in `align`, the merger and the LM in `image` (with `train_tower`: the whole visual part and
    the LM)."""
    lm = {"language_model": model.model.language_model, "lm_head": model.lm_head}
    visual = {"visual": model.model.visual}
    merger = {"merger": model.model.visual.merger}
    image = {**(visual if train_tower else merger), **lm}
    return {"tower": visual, "symbolic": lm, "align": merger, "image": image}[stage]


def image_features(model, inputs: dict) -> torch.Tensor:
    """[B, g*g, H]: the merged visual tokens the LM receives for `inputs` (tower, then merger)."""
    feats = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    return torch.stack(list(feats.pooler_output))


def with_tokens(inputs: dict, tokens: torch.Tensor) -> dict:
    """`inputs` with the visual tokens given ([B, g*g, H]) instead of computed from the pixels; the LM sees
    them at the image's multimodal rotary positions."""
    out = {k: v for k, v in inputs.items() if k != "pixel_values"}
    out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(tokens))}
    return out


def load_language_model(model, tok, source: str) -> None:
    """The LM (decoder layers, final norm, word embeddings and output rows) of a trained testbed LLaVA folder
    (`source`; `laser:` names a packaged asset) into the Qwen2-VL model, as a real LVLM starts from a trained
    LM: same shapes (hidden 96, 4 layers of 4 heads, MLP 288), rows matched by token; Qwen2's query/key/value
    biases (Llama has none) start at zero, the rows of tokens the source lacks keep their initial weights.
    For text tokens mrope is the source's 1D rotary embedding; the image's tokens get new (2D) positions."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from laser.paths import resolve_path

    folder = Path(resolve_path(source))
    weights = load_file(folder / "model.safetensors")
    source_tok = AutoTokenizer.from_pretrained(folder)
    lm = model.model.language_model
    prefix = "language_model.model."
    layers = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix) and k != prefix + "embed_tokens.weight"}
    missing, unexpected = lm.load_state_dict(layers, strict=False)
    missing = [k for k in missing if k != "embed_tokens.weight"]  # matched by token below
    assert not unexpected and all(k.endswith("_proj.bias") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for name in missing:
            lm.get_parameter(name).zero_()
        vocab = source_tok.get_vocab()
        pairs = [(i, vocab[t]) for t, i in tok.get_vocab().items() if t in vocab]
        ours, theirs = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        lm.embed_tokens.weight[ours] = weights[prefix + "embed_tokens.weight"][theirs]
        model.lm_head.weight[ours] = weights["language_model.lm_head.weight"][theirs]


class Run:
    """The state shared by the stages: arguments, model, tokenizer, processors, batcher, log, checkpoints."""

    def __init__(self, a):
        self.a = a
        self.dir = Path(a.run)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logf = (self.dir / "train.log").open("a")
        torch.manual_seed(a.seed)
        self.tok = qwen.build_tokenizer()
        self.proc = qwen.build_processor(self.tok)
        self.proc_hi = qwen.build_processor(self.tok, max_pixels=HIRES * HIRES)
        self.model = qwen.build_model(self.tok, rope_theta=a.rope_theta)
        if a.lm_seed is not None:  # the LM's initial weights from their own seed (the tower's stay the seed's)
            torch.manual_seed(a.lm_seed)
            for module in (*self.model.model.language_model.modules(), self.model.lm_head):
                self.model._init_weights(module)
        if a.lm_from:
            load_language_model(self.model, self.tok, a.lm_from)
        else:
            scale_qk(self.model, a.qk_init)
        self.batcher = QwenBatcher(self.tok, self.proc)
        self.budget = a.max_steps_now  # steps this invocation may still train (None: no limit)

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def ckpt(self, stage: str) -> Path:
        return self.dir / f"{stage}.pt"

    def done(self, stage: str) -> bool:
        p = self.ckpt(stage)
        return p.exists() and torch.load(p, weights_only=False)["done"]

    def load_outputs(self, stage: str) -> None:
        """The trained weights of `stage` (finished) into the model."""
        st = torch.load(self.ckpt(stage), weights_only=False)
        for name, module in trained_modules(self.model, stage, self.a.tower_lr > 0).items():
            module.load_state_dict(st["modules"][name])

    def save(self, stage: str, step: int, done: bool, opt, rng, extra: dict | None = None) -> None:
        mods = {name: m.state_dict() for name, m in trained_modules(self.model, stage, self.a.tower_lr > 0).items()}
        tmp = self.dir / f"{stage}.tmp"
        torch.save({"step": step, "done": done, "modules": mods, "opt": opt.state_dict(), "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "args": vars(self.a), **(extra or {})}, tmp)
        tmp.replace(self.ckpt(stage))

    def hires(self, step: int, phase: int = 0, symbolic: bool = False) -> bool:
        e = self.a.symbol_hires_every if symbolic and self.a.symbol_hires_every >= 0 else self.a.hires_every
        return e > 0 and step % e == (e - 1 + phase) % e

    def take_step(self) -> bool:
        """False once this invocation's step budget (`--max-steps-now`) is spent."""
        if self.budget is None:
            return True
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True


def run_stage(run: Run, stage: str, total: int, step_fn, opt_params, lr_fn, extra_state=None, on_step=None):
    """The loop every stage shares: resume from RUN/<stage>.pt, seed, step, log, checkpoint.
    `step_fn(step, rng) -> (loss, stats)`; `lr_fn(step) -> lr`; `on_step(step)` after each step."""
    a = run.a
    opt = torch.optim.AdamW(opt_params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(a.seed + 1 + STAGES.index(stage))
    step = 0
    if run.ckpt(stage).exists():
        st = torch.load(run.ckpt(stage), weights_only=False)
        changed = {k: (v, vars(a).get(k)) for k, v in st["args"].items() if k not in PLUMBING and vars(a).get(k) != v}
        if changed:
            raise SystemExit(f"{run.ckpt(stage)} was trained with other settings; resume with the same ones or use "
                             "another --run: " + ", ".join(f"--{k.replace('_', '-')} {old!r} (now {new!r})"
                                                           for k, (old, new) in sorted(changed.items())))
        for name, module in trained_modules(run.model, stage, a.tower_lr > 0).items():
            module.load_state_dict(st["modules"][name])
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step = st["step"]
        if extra_state:
            extra_state[1](st)
        run.log(f"{stage}: resumed at step {step}/{total}")
    else:
        torch.manual_seed(a.seed + 1 + STAGES.index(stage))
        run.log(f"{stage}: {total} steps, {sum(p.numel() for g in opt_params for p in g['params'])} trained parameters")
    agg: dict[str, float] = defaultdict(float)

    def save(done: bool) -> None:
        run.save(stage, step, done, opt, rng, extra_state[0]() if extra_state else None)

    run.model.train()
    while step < total:
        if not run.take_step():
            save(False)
            run.log(f"{stage}: stopped at step {step}")
            return False
        t0 = time.time()
        lr = lr_fn(step)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        loss, stats = step_fn(step, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        agg["loss"] += loss.item()
        agg["n"] += 1
        agg["s"] += time.time() - t0
        for k, v in stats.items():
            agg[k] += v
        if step % a.log_every == 0 or step == total:
            n = agg.pop("n")
            accs = " ".join(f"{k[4:]}={agg[k] / agg['n_' + k[4:]]:.2f}" for k in sorted(agg) if k.startswith("acc_"))
            other = " ".join(f"{k}={agg[k] / n:.3g}" for k in sorted(agg) if k not in ("loss", "s") and
                             not k.startswith(("acc_", "n_")))
            run.log(f"{stage} step {step}/{total} lr {lr:.2e} loss {agg['loss'] / n:.3f} {other} [{accs}] "
                    f"{agg['s'] / n:.2f}s/step")
            agg.clear()
        if step % a.ckpt_every == 0 and step < total:
            save(False)
        if on_step:
            on_step(step)
    save(True)
    run.log(f"{stage}: done")
    return True


def count_hits(stats: dict, logits, labels, turns, kind: str = "") -> None:
    """First-token hits of every answer of a conversation batch, per family (reading per size)."""
    starts = answer_starts(labels)
    hits = (logits.argmax(-1)[starts] == labels[:, 1:][starts]).tolist()
    for (fam, size, _), hit in zip(turns, hits):
        name = f"{kind}{'read-' + size if fam == 'reading' else fam}"
        stats[f"acc_{name}"] = stats.get(f"acc_{name}", 0) + hit
        stats[f"n_{name}"] = stats.get(f"n_{name}", 0) + 1


def set_families(weights: dict) -> None:
    views.FAMILY_WEIGHTS.clear()
    views.FAMILY_WEIGHTS.update(weights)


def tower_stage(run: Run) -> bool:
    a, model = run.a, run.model
    visual = model.model.visual
    dim = model.config.vision_config.hidden_size
    torch.manual_seed(a.seed + 1)  # the heads: the same in a fresh and in a resumed run
    heads = torch.nn.ModuleDict({"digit": torch.nn.Linear(dim, 11), "color": torch.nn.Linear(dim, len(COLOR_NAMES) + 1),
                                 "box_digit": torch.nn.Linear(dim, 10)})
    hi_batch = a.vision_hires_batch or max(1, a.vision_batch // 4)

    def step_fn(step, rng):
        frac = step / a.vision_steps
        hi = run.hires(step)
        set_families(VIEW_FAMILIES)
        d = views.sample_views(rng, hi_batch if hi else a.vision_batch, vision_stage_at(frac), views_per_scene=12,
                               size=HIRES if hi else MODEL_INPUT)
        rows, grid = patchify(run.batcher.pixels(d))
        h = visual(rows, grid_thw=grid).pooler_output.view(len(d["questions"]), -1, dim)  # [B, (S/8)^2, dim]
        loss = vision_aux(heads, h, d, torch.from_numpy(d["color_labels"]), a.patch_digit)
        stats = {}
        with torch.no_grad():
            if len(d["box_view"]):
                m = torch.from_numpy(d["box_mask"])
                feats = (h[torch.from_numpy(d["box_view"])] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
                stats["acc_box-digit"] = (heads["box_digit"](feats).argmax(-1) == torch.from_numpy(d["box_digit"])).sum().item()
                stats["n_box-digit"] = len(d["box_view"])
        return loss, stats

    params = [{"params": list(visual.parameters()) + list(heads.parameters())}]
    heads_state = (lambda: {"heads": heads.state_dict()}, lambda st: heads.load_state_dict(st["heads"]))
    return run_stage(run, "tower", a.vision_steps, step_fn, params,
                     lambda s: 1.5e-3 * min(1.0, (s + 1) / 50) * (1.0 - 0.7 * s / a.vision_steps), heads_state)


def sparse_digit_tokens(model, tok, d: dict, keep: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """`symbolic_tokens` with each cell's digit part kept with probability `keep` (the colour part always): the
    LM learns to gather a box's digit from some of its cells, as a tower gives it (on the cells of the glyph,
    not on every cell of the box). [n, g*g, H]"""
    full = symbolic_tokens(model, tok, d)
    if keep >= 1.0:
        return full
    colour_only = symbolic_tokens(model, tok, {**d, "digit_labels": np.full_like(d["digit_labels"], -100)})
    dropped = torch.rand(full.shape[:2], generator=gen) >= keep
    return torch.where(dropped[..., None], colour_only, full)


def symbolic_batch(run: Run, rng, step: int, n_steps: int, batch: int, hi: bool, existence_first: bool = True):
    """A batch of conversations (`views.sample_turns`) and its model inputs, the visual tokens symbolic."""
    a = run.a
    if existence_first and step < a.symbol_existence * n_steps:  # 64 px only: the 8x8 grid is learned first
        set_families({"existence": 1.0})
        d = views.sample_turns(rng, batch, 0, turns=1)
    else:
        size = HIRES if hi else MODEL_INPUT
        n = max(1, batch // 3) if hi else batch
        local = step * a.steps // max(1, n_steps) if existence_first else step
        set_families(FAMILY_WEIGHTS_EARLY if local < EARLY_SHARE * a.steps else FAMILY_WEIGHTS)
        d = views.sample_turns(rng, n, stage_at(step, n_steps), turns=a.turns, size=size)
    inputs, labels, turns = run.batcher.turns(d)
    return d, inputs, labels, turns


def symbolic_stage(run: Run) -> bool:
    a, model = run.a, run.model

    def step_fn(step, rng):
        d, inputs, labels, turns = symbolic_batch(run, rng, step, a.symbol_steps, a.batch,
                                                  run.hires(step, symbolic=True))
        keep = 1.0 if step < a.symbol_existence * a.symbol_steps else a.digit_keep
        out = model(**with_tokens(inputs, sparse_digit_tokens(model, run.tok, d, keep)))
        logits = out.logits[:, :-1]
        loss = answer_loss(logits, (inputs["input_ids"], inputs["attention_mask"], labels), model.config.image_token_id,
                           a.prompt_loss)
        stats: dict = {}
        count_hits(stats, logits, labels, turns)
        return loss, stats

    params = [{"params": [p for m in trained_modules(model, "symbolic").values() for p in m.parameters()]}]
    return run_stage(run, "symbolic", a.symbol_steps, step_fn, params,
                     lambda s: a.lr * min(1.0, (s + 1) / a.warmup))


def aligned_token_decode(run: Run, n_views: int = 144, seed: int = 5) -> tuple[float, float]:
    """(digit, colour): the share of the visual tokens of readable boxes whose largest dot product among the
    LM's digit word embeddings is the box's digit, and of the tokens of any box whose largest among the colour
    words' is its colour (64 px evaluation scenes, a fixed seed): whether the visual tokens carry the digit as
    the word the symbolic stage taught the LM to read. Draws nothing from the training generators."""
    model, tok = run.model, run.tok
    emb = model.get_input_embeddings().weight
    digit_emb = emb[torch.tensor(tok.convert_tokens_to_ids([str(i) for i in range(10)]))]
    colour_emb = emb[torch.tensor(tok.convert_tokens_to_ids(list(COLOR_NAMES)))]
    set_families(VIEW_FAMILIES)
    d = views.sample_turns(random.Random(seed), n_views, 2, turns=1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        tokens = image_features(model, run.batcher.turns(d)[0])
    model.train(was_training)
    digit, colour = torch.from_numpy(d["digit_labels"]), torch.from_numpy(d["color_labels"])
    has_digit, has_colour = (digit >= 0) & (digit < 10), colour < len(COLOR_NAMES)
    digit_hits = ((tokens[has_digit] @ digit_emb.T).argmax(-1) == digit[has_digit]).float().mean().item()
    colour_hits = ((tokens[has_colour] @ colour_emb.T).argmax(-1) == colour[has_colour]).float().mean().item()
    return digit_hits, colour_hits


def align_stage(run: Run) -> bool:
    a, model = run.a, run.model
    if not run.ckpt("align").exists() and a.token_align_steps > 0:
        # a fresh MLP, as LLaVA's projector is at its first stage: the tower stage trained the merger for its
        # heads, and its outputs (mean squared error 0.36 to the symbolic tokens, ~1000x the aligned error)
        # took most of a 400-step align stage to shrink, leaving the digit unreadable on the aligned tokens
        torch.manual_seed(a.seed + 1 + STAGES.index("align"))
        for module in model.model.visual.merger.mlp.modules():
            model._init_weights(module)

    def step_fn(step, rng):
        hi = run.hires(step)
        set_families(VIEW_FAMILIES)
        d = views.sample_turns(rng, max(1, a.batch // 3) if hi else a.batch, (1, 2, "q")[step % 3], turns=1,
                               size=HIRES if hi else MODEL_INPUT)
        inputs, _, _ = run.batcher.turns(d)
        mse = F.mse_loss(image_features(model, inputs), symbolic_tokens(model, run.tok, d).detach())
        return mse * TOKEN_ALIGN_SCALE, {"mse": mse.item()}

    params = [{"params": list(model.model.visual.merger.parameters())}]
    finished = run_stage(run, "align", a.token_align_steps, step_fn, params, lambda s: a.align_lr)
    if finished:
        digit, colour = aligned_token_decode(run)
        run.log(f"align: tokens decoded as the box's digit {digit:.2f}, colour {colour:.2f}")
    return finished


def image_stage(run: Run) -> bool:
    a, model = run.a, run.model
    held = dev_records(Path(a.dev_root), a.eval_n, a.dev_scenes)

    def symbolic_step(s: int) -> bool:
        return a.symbol_every > 0 and s % a.symbol_every == a.symbol_every - 1

    def step_fn(step, rng):
        stats: dict = {}
        if symbolic_step(step):  # no image: the merger keeps what it learned
            hi = run.hires(step // a.symbol_every, symbolic=True)
            d, inputs, labels, turns = symbolic_batch(run, rng, step, a.steps, a.batch, hi, existence_first=False)
            out = model(**with_tokens(inputs, sparse_digit_tokens(model, run.tok, d, a.digit_keep)))
            kind, align = "sym-", 0.0
        else:
            hi = run.hires(step, phase=2)
            set_families(FAMILY_WEIGHTS_EARLY if step < EARLY_SHARE * a.steps else FAMILY_WEIGHTS)
            d = views.sample_turns(rng, max(1, a.batch // 3) if hi else a.batch, stage_at(step, a.steps),
                                   turns=a.turns, size=HIRES if hi else MODEL_INPUT)
            inputs, labels, turns = run.batcher.turns(d)
            tokens = image_features(model, inputs)
            align = F.mse_loss(tokens, symbolic_tokens(model, run.tok, d).detach())
            stats["mse"] = align.item()
            out = model(**with_tokens(inputs, tokens))
            kind = "128-" if hi else ""
        logits = out.logits[:, :-1]
        loss = answer_loss(logits, (inputs["input_ids"], inputs["attention_mask"], labels), model.config.image_token_id,
                           a.prompt_loss)
        count_hits(stats, logits, labels, turns, kind)
        return loss + a.token_align * TOKEN_ALIGN_SCALE * align, stats

    def evaluate(step: int) -> None:
        model.eval()
        res = first_token_eval(model, run.proc, held, a.dev_root, batch=48, prompt_fn=qwen.prompt)
        res["full@128"] = first_token_eval(model, run.proc_hi, held, a.dev_root, batch=48, prompt_fn=qwen.prompt,
                                           views=("full",))["full"]
        digit, colour = aligned_token_decode(run)
        run.log(f"dev step {step} tokens decoded as the box's digit {digit:.2f}, colour {colour:.2f}")
        model.train()
        for view, accs in res.items():
            run.log(f"dev step {step} {view}: " + " ".join(f"{k}={v[0]:.2f}({v[1]})" for k, v in sorted(accs.items())))

    def export(step: int) -> None:
        model.save_pretrained(a.export, safe_serialization=True)
        run.proc.save_pretrained(a.export)
        (Path(a.export) / "training_commands.txt").write_text(f"python {SCRIPT} " + shlex.join(sys.argv[1:]) + "\n")
        run.log(f"exported image step {step} to {a.export}")

    def on_step(step: int) -> None:
        if step % a.eval_every == 0 or step == a.steps:
            evaluate(step)
        if step % a.export_every == 0 or step == a.steps:
            export(step)

    tower = [p for n, p in model.model.visual.named_parameters() if not n.startswith("merger.")] if a.tower_lr > 0 else []
    in_tower = {id(p) for p in tower}
    rest = [p for m in trained_modules(model, "image", a.tower_lr > 0).values() for p in m.parameters() if id(p) not in in_tower]
    params = [{"params": rest, "lr_scale": 1.0}] + ([{"params": tower, "lr_scale": a.tower_lr}] if tower else [])
    return run_stage(run, "image", a.steps, step_fn, params, lambda s: lr_at(s, a.steps, a.lr, a.warmup),
                     on_step=on_step)


RUNNERS = {"tower": tower_stage, "symbolic": symbolic_stage, "align": align_stage, "image": image_stage}


def stage_names(a: argparse.Namespace) -> list[str]:
    """`--stages` as a list, in the order given."""
    return [s.strip() for s in a.stages.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "testbed_work/qwen"))
    ap.add_argument("--export", default=str(EXPORT))
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="stages to run, in order (comma-separated); a finished stage is skipped, and one whose "
                         "inputs are not finished stops the run")
    ap.add_argument("--vision-steps", type=int, default=10000, help="steps of the tower stage")
    ap.add_argument("--vision-batch", type=int, default=32)
    ap.add_argument("--vision-hires-batch", type=int, default=None,
                    help="views of a 128 px tower step (default vision-batch // 4: the same pixels)")
    ap.add_argument("--symbol-steps", type=int, default=5000, help="steps of the symbolic stage")
    ap.add_argument("--symbol-existence", type=float, default=0.3,
                    help="share of the symbolic stage spent first on existence questions about one or two boxes")
    ap.add_argument("--digit-keep", type=float, default=1.0,
                    help="symbolic steps after the existence warm-up: share of a box's cells whose token keeps the digit")
    ap.add_argument("--token-align-steps", type=int, default=1500, help="steps of the align stage")
    ap.add_argument("--align-lr", type=float, default=3e-3, help="learning rate of the align stage")
    ap.add_argument("--steps", type=int, default=4000, help="steps of the image stage")
    ap.add_argument("--batch", type=int, default=24, help="conversations per 64 px step (a 128 px step: a third)")
    ap.add_argument("--turns", type=int, default=3, help="questions per view (one conversation)")
    ap.add_argument("--symbol-every", type=int, default=4, help="in the image stage, every N-th step is symbolic")
    ap.add_argument("--token-align", type=float, default=0.5, help="weight of the token-alignment loss in the image stage")
    ap.add_argument("--tower-lr", type=float, default=0.0,
                    help="in the image stage, train the tower too, at this multiple of the learning rate (0: frozen)")
    ap.add_argument("--hires-every", type=int, default=4, help="every n-th step of each stage uses 128 px views (0: never)")
    ap.add_argument("--symbol-hires-every", type=int, default=0,
                    help="the same for the symbolic stage and the image stage's symbolic steps (-1: --hires-every)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--rope-theta", type=float, default=qwen.ARCH["rope_theta"],
                    help="the LM's rotary base (the image's rows and columns get the lower frequencies of mrope)")
    ap.add_argument("--lm-from", default="laser:assets/testbed_emergent/model",
                    help="start the LM from a trained testbed LLaVA's (a folder or laser:assets/...; '' : from scratch, "
                         "with --qk-init)")
    ap.add_argument("--qk-init", type=float, default=8.0, help="scale of the LM's query/key weights at initialisation")
    ap.add_argument("--prompt-loss", type=float, default=0.5)
    ap.add_argument("--patch-digit", type=float, default=1.0, help="weight of the tower stage's per-token digit loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-seed", type=int, default=None,
                    help="with --lm-from '': draw the LM's initial weights from this seed instead (the symbolic "
                         "stage's plateau and what it ends with depend on them; the tower is unchanged)")
    ap.add_argument("--max-steps-now", type=int, default=None,
                    help="train at most this many steps in this invocation, then checkpoint and stop (resume later)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--export-every", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-n", type=int, default=240, help="dev questions scored at each eval")
    ap.add_argument("--dev-root", default=str(ROOT / "testbed_work/splits" / f"seed{DEV_SEED}"))
    ap.add_argument("--dev-scenes", type=int, default=DEFAULT_SCENES, help="scenes of the dev split, if it is made here")
    ap.add_argument("--log-every", type=int, default=25)
    a = ap.parse_args(argv)
    if a.lm_seed is not None and a.lm_from:
        ap.error("--lm-seed draws a new LM from scratch: pass --lm-from '' with it")
    unknown = sorted(set(stage_names(a)) - set(STAGES))
    if unknown:
        ap.error(f"--stages: unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    return a


def main() -> None:
    a = parse_args()
    stages = stage_names(a)
    torch.set_num_threads(a.threads)
    run = Run(a)
    new = not any(run.ckpt(s).exists() for s in STAGES)
    run.log(f"{'new run' if new else 'invocation'}: {json.dumps(vars(a))}; arch {qwen.ARCH | {'rope_theta': a.rope_theta}}")
    saved_families = dict(views.FAMILY_WEIGHTS)
    try:
        for stage in stages:
            if run.done(stage):
                continue
            missing = [s for s in INPUTS[stage] if not run.done(s)]
            if missing:
                run.log(f"{stage}: waits for {missing} (not finished in {run.dir})")
                return
            for s in INPUTS[stage]:
                run.load_outputs(s)
            run.model.requires_grad_(False)
            for m in trained_modules(run.model, stage, a.tower_lr > 0).values():
                m.requires_grad_(True)
            if not RUNNERS[stage](run):
                return
        run.log("done")
    finally:
        set_families(saved_families)


if __name__ == "__main__":
    main()
