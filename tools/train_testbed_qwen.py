"""Train the Qwen2-VL testbed LVLM (step-driven, seeded, resumable): the recipe of tools/train_emergent.py
for a second architecture.

    python tools/train_testbed_qwen.py --run testbed_work/qwen

rebuilds `laser/assets/testbed_qwen/model` (the `model=testbed_qwen` preset) from nothing: same seed, same
steps, same model (one thread); the LR schedules, the curricula and the resolution schedule follow the
step count, never the clock. Re-running the same command resumes from RUN/last.pt (written every
`--ckpt-every` steps of either stage, and when the first stage ends); a run stopped and resumed ends with
the weights of one uninterrupted run. The model is exported to `--export` every `--export-every` steps
and at the end, with the command line in `training_commands.txt`.

Model (`tools/testbed/qwen.py`): `Qwen2VLForConditionalGeneration`, a 3-layer vision tower (4 px patches,
embed 96, 2D rotary), the 2x2 patch merger (Qwen2-VL's projector) and an 8-layer Qwen2 LM (hidden 96, 4
heads of 24: mrope_section [4, 4, 4]); the word-level tokenizer of `tools/testbed/model.py` with Qwen2-VL's
special tokens, and the exact prompt of `adapters/qwen_vl.py` (system prompt, image, question, instruction).

Resolution. A 64 px image is 16x16 patches -> 8x8 = 64 merged tokens (the processor's default
`max_pixels` = 64*64, like the LLaVA testbed's 8x8 grid); `max_pixels` = 128*128 gives 16x16 = 256 tokens,
where a small box spans 2x as many pixels. So that the model can use them, one step in `--hires-every` (4) of
both stages uses views rendered at 128 px (`views.sample_views(size=128)`; fewer views per step, about the same
pixels and LM tokens: `--vision-hires-batch`, `--hires-batch`). Labels are per merged token: one cell per 8x8
px of the view on an (S/8) x (S/8) grid (8x8 at 64 px, 16x16 at 128 px), row-major, the merged tokens' order;
readable-box and size thresholds are in pixels of the view as rendered.

Two stages:
1. The vision tower alone (`--vision-steps`, the schedule and curriculum of `vision_pretrain` in
   tools/train_testbed.py, its losses `vision_aux`): heads on the merged tokens learn per-token colour,
   per-token digit (`--patch-digit`) and box-pooled digit labels of generated views; no language model, no
   question. Patch embedding and blocks are then frozen.
2. The merger (warm-started from stage 1, its two weights kept at their norms: `FixedNorm` of
   tools/train_emergent.py) and the LM from scratch, on cross-entropy of the answer tokens, the prompt's
   next-token loss (`--prompt-loss`) and the text-only question-attention loss (`--question-attn`: the last
   prompt token attends to the question's words naming the box); no label of where to look in the image.
   Curriculum and family mix of tools/train_emergent.py.
Every `--eval-every` steps the first answer token is scored on questions of the dev split (generator seed
1): full scene and tight oracle crop at the default 64*64 pixels, and the full scene at 128*128 ("full@128").

Cost (one thread, measured on a 2-core machine with both cores busy): stage 1 about 2.6 s per 64 px step
(64 views) and 4.8 s per 128 px step (16 views), 3.2 s/step on average; stage 2 about 0.96 s per 64 px step
(24 views) and 1.65 s per 128 px step (8 views), 1.13 s/step on average; a dev eval (240 questions, three
views) about 50 s. The defaults (3000 + 5000 steps, batch 24) take about 2.7 h + 1.6 h + 8 min of evals:
about 4.3 h there, roughly half on an idle core.
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

import torch  # noqa: E402
import torch.nn.utils.parametrize as parametrize  # noqa: E402
from testbed import qwen, views  # noqa: E402
from testbed.losses import answer_loss, first_token_hits  # noqa: E402
from testbed.quick_eval import first_token_eval  # noqa: E402
from testbed.qwen import HIRES, QwenBatcher, patchify  # noqa: E402
from train_emergent import (  # noqa: E402
    EARLY_SHARE,
    FAMILY_WEIGHTS,
    FAMILY_WEIGHTS_EARLY,
    TEXT_FAMILIES,
    FixedNorm,
    lr_at,
    stage_at,
    text_stage_at,
)
from train_testbed import NAMING_WORDS, question_attention_loss, vision_aux  # noqa: E402

from laser.testbed.scenes import COLOR_NAMES, MODEL_INPUT  # noqa: E402
from laser.testbed.split import DEFAULT_SCENES, load_split, materialize_split  # noqa: E402

EXPORT = ROOT / "laser/assets/testbed_qwen/model"
DEV_SEED = 1
SCRIPT = "tools/train_testbed_qwen.py"


def merger_linears(model):
    mlp = model.model.visual.merger.mlp
    return mlp[0], mlp[2]


def fix_merger_norm(model) -> None:
    """Stage 2: the merger's weights keep their (pre-trained) norms, as the LLaVA projector's
    (`fix_projector_norm` of tools/train_emergent.py): the visual tokens cannot grow into attention sinks."""
    for linear in merger_linears(model):
        parametrize.register_parametrization(linear, "weight", FixedNorm(float(linear.weight.detach().norm())))


def merger_norms(model) -> list[float]:
    """The norms `fix_merger_norm` holds (the pre-trained merger's: not in the state dict, so checkpointed)."""
    return [linear.parametrizations.weight[0].norm for linear in merger_linears(model)]


def set_merger_norms(model, norms: list[float]) -> None:
    for linear, norm in zip(merger_linears(model), norms):
        linear.parametrizations.weight[0].norm = norm


def freeze_tower(model) -> None:
    visual = model.model.visual
    visual.patch_embed.requires_grad_(False)
    visual.blocks.requires_grad_(False)


def plain_copy(model, tok):
    """A fresh model holding `model`'s weights with the merger parametrizations folded in (exported)."""
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for i, linear in zip((0, 2), merger_linears(model)):
        state[f"model.visual.merger.mlp.{i}.weight"] = linear.weight.detach().clone()
    out = qwen.build_model(tok)
    out.load_state_dict(state)
    return out


def dev_records(root: Path, n: int, n_scenes: int) -> list[dict]:
    if not (root / "eval.jsonl").exists():
        materialize_split(root, n_scenes=n_scenes, seed=DEV_SEED)
    return load_split(root / "eval.jsonl")[:n]


def pixels_of(d, batcher) -> torch.Tensor:
    px = torch.from_numpy(d["pixels"]).permute(0, 3, 1, 2).float() / 255.0
    return (px - batcher.mean) / batcher.std


def vision_stage_at(frac: float):
    """`vision_pretrain`'s curriculum: grid-aligned warm-up, then stage 0, then the evaluation scenes."""
    return "a0" if frac < 0.3 else ("a1" if frac < 0.55 else (0 if frac < 0.8 else 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "testbed_work/qwen"))
    ap.add_argument("--export", default=str(EXPORT))
    ap.add_argument("--steps", type=int, default=5000, help="stage-2 (merger + LM) steps")
    ap.add_argument("--vision-steps", type=int, default=3000, help="stage-1 (vision tower) steps")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--hires-batch", type=int, default=None, help="views of a 128 px stage-2 step (default batch // 3)")
    ap.add_argument("--vision-batch", type=int, default=64)
    ap.add_argument("--vision-hires-batch", type=int, default=None,
                    help="views of a 128 px stage-1 step (default vision-batch // 4: the same pixels)")
    ap.add_argument("--hires-every", type=int, default=4, help="every n-th step of both stages uses 128 px views (0: never)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-at", type=int, default=None, help="stop (checkpoint and export) after this stage-2 step")
    ap.add_argument("--vision-stop-at", type=int, default=None, help="stop (checkpoint) after this stage-1 step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--export-every", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=600)
    ap.add_argument("--eval-n", type=int, default=240, help="dev questions scored at each eval")
    ap.add_argument("--dev-root", default=str(ROOT / "testbed_work/splits" / f"seed{DEV_SEED}"))
    ap.add_argument("--dev-scenes", type=int, default=DEFAULT_SCENES, help="scenes of the dev split, if it is made here")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--prompt-loss", type=float, default=0.5)
    ap.add_argument("--patch-digit", type=float, default=1.0, help="weight of stage 1's per-token digit loss")
    ap.add_argument("--question-attn", type=float, default=0.5)
    ap.add_argument("--question-attn-layers", default="0")
    ap.add_argument("--question-attn-heads", default="2,3")
    ap.add_argument("--text-steps", type=int, default=0,
                    help="stage-2 steps of text only before the image steps (tools/train_emergent.py --text-steps)")
    ap.add_argument("--text-every", type=int, default=0, help="after them, every N-th stage-2 step is a text step")
    a = ap.parse_args()
    hires_batch = a.hires_batch or max(1, a.batch // 3)
    vision_hires_batch = a.vision_hires_batch or max(1, a.vision_batch // 4)
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    logf = (run / "train.log").open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    def hires(step: int) -> bool:
        return a.hires_every > 0 and step % a.hires_every == a.hires_every - 1

    torch.manual_seed(a.seed)
    tok = qwen.build_tokenizer()
    proc = qwen.build_processor(tok)
    proc_hi = qwen.build_processor(tok, max_pixels=HIRES * HIRES)
    model = qwen.build_model(tok)
    dim = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({"digit": torch.nn.Linear(dim, 11), "color": torch.nn.Linear(dim, len(COLOR_NAMES) + 1),
                                 "box_digit": torch.nn.Linear(dim, 10)})
    batcher = QwenBatcher(tok, proc)
    rng = random.Random(a.seed)
    ck = run / "last.pt"
    st = torch.load(ck, weights_only=False) if ck.exists() else None
    phase = st["phase"] if st else "vision"
    log(f"resumed ({phase} stage, step {st['step']})" if st else
        f"new run: {json.dumps(vars(a))}; arch {qwen.ARCH}; params {sum(p.numel() for p in model.parameters())}")

    def save(state: dict) -> None:
        torch.save({**state, "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "args": vars(a)}, run / "tmp.pt")
        (run / "tmp.pt").replace(ck)

    # ---------------------------------------------------------------- stage 1: the vision tower alone
    if phase == "vision":
        visual = model.model.visual
        vparams = list(visual.parameters()) + list(heads.parameters())
        vopt = torch.optim.AdamW(vparams, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
        vstep = 0
        if st:
            model.load_state_dict(st["model"])
            heads.load_state_dict(st["heads"])
            vopt.load_state_dict(st["opt"])
            rng.setstate(st["rng"])
            torch.set_rng_state(st["torch_rng"])
            vstep = st["step"]
        acc, n_acc, times = 0.0, 0, defaultdict(list)
        vlast = min(a.vision_steps, a.vision_stop_at if a.vision_stop_at is not None else a.vision_steps)
        while vstep < vlast:
            t0 = time.time()
            frac = vstep / a.vision_steps
            stage, hi = vision_stage_at(frac), hires(vstep)
            d = views.sample_views(rng, vision_hires_batch if hi else a.vision_batch, stage, views_per_scene=12,
                                   size=HIRES if hi else MODEL_INPUT)
            rows, grid = patchify(pixels_of(d, batcher))
            h = visual(rows, grid_thw=grid).pooler_output.view(len(d["questions"]), -1, dim)  # [B, (S/8)^2, dim]
            loss = vision_aux(heads, h, d, torch.from_numpy(d["color_labels"]), a.patch_digit)
            for g in vopt.param_groups:
                g["lr"] = 1.5e-3 * min(1.0, (vstep + 1) / 50) * (1.0 - 0.7 * frac)
            vopt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vparams, 1.0)
            vopt.step()
            vstep += 1
            with torch.no_grad():
                if len(d["box_view"]):
                    m = torch.from_numpy(d["box_mask"])
                    feats = (h[torch.from_numpy(d["box_view"])] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
                    acc += (heads["box_digit"](feats).argmax(-1) == torch.from_numpy(d["box_digit"])).sum().item()
                    n_acc += len(d["box_view"])
            times["128" if hi else "64"].append(time.time() - t0)
            if vstep % a.log_every == 0 or vstep == vlast:
                per = " ".join(f"{k}px {sum(v) / len(v):.2f}s/step" for k, v in sorted(times.items()))
                log(f"vision step {vstep}/{a.vision_steps} stage {stage} loss {loss.item():.3f} "
                    f"box-digit acc {acc / max(n_acc, 1):.3f} [{per}]")
                acc, n_acc, times = 0.0, 0, defaultdict(list)
            if vstep % a.ckpt_every == 0 and vstep < a.vision_steps:
                save({"phase": "vision", "step": vstep, "model": model.state_dict(), "heads": heads.state_dict(),
                      "opt": vopt.state_dict()})
        if vstep < a.vision_steps:
            save({"phase": "vision", "step": vstep, "model": model.state_dict(), "heads": heads.state_dict(),
                  "opt": vopt.state_dict()})
            log(f"stopped at vision step {vstep}")
            return
        del vopt
        st = None  # stage 2 starts here, from the state in memory

    # ---------------------------------------------------------------- stage 2: merger + LM
    freeze_tower(model)
    fix_merger_norm(model)
    if a.question_attn > 0:
        model.set_attn_implementation("eager")  # attention rows for the question-attention loss
    q_layers = tuple(int(x) for x in a.question_attn_layers.split(","))
    q_heads = tuple(int(x) for x in a.question_attn_heads.split(","))
    naming_ids = torch.tensor(tok.convert_tokens_to_ids(list(NAMING_WORDS)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step = 0
    if st:
        model.load_state_dict(st["model"])
        set_merger_norms(model, st["merger_norms"])
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step = st["step"]
    else:
        log(f"stage 2: {sum(p.numel() for p in params)} trainable parameters (merger + LM)")

    def save_ckpt() -> None:
        save({"phase": "lm", "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
              "merger_norms": merger_norms(model)})

    if not ck.exists() or phase == "vision":
        save_ckpt()  # the end of stage 1: a resumed run does not redo it

    def export() -> None:
        plain_copy(model, tok).save_pretrained(a.export, safe_serialization=True)
        proc.save_pretrained(a.export)
        (Path(a.export) / "training_commands.txt").write_text(f"python {SCRIPT} " + shlex.join(sys.argv[1:]) + "\n")
        log(f"exported step {step} to {a.export}")

    held = dev_records(Path(a.dev_root), a.eval_n, a.dev_scenes)

    def evaluate() -> None:
        model.eval()
        res = first_token_eval(model, proc, held, a.dev_root, batch=48, prompt_fn=qwen.prompt)
        res["full@128"] = first_token_eval(model, proc_hi, held, a.dev_root, batch=48, prompt_fn=qwen.prompt,
                                           views=("full",))["full"]
        model.train()
        for view, accs in res.items():
            log(f"dev step {step} {view}: " + " ".join(f"{k}={v[0]:.2f}({v[1]})" for k, v in sorted(accs.items())))

    def set_families(step: int) -> None:
        views.FAMILY_WEIGHTS.clear()
        views.FAMILY_WEIGHTS.update(FAMILY_WEIGHTS_EARLY if step < EARLY_SHARE * a.steps else FAMILY_WEIGHTS)

    agg: dict[str, float] = defaultdict(float)
    model.train()
    total = a.text_steps + a.steps
    last = min(total, a.stop_at if a.stop_at is not None else total)
    saved_families = dict(views.FAMILY_WEIGHTS)
    while step < last:
        t0 = time.time()
        s = step - a.text_steps  # step of the image steps (negative: the text steps)
        text_step = s < 0 or (a.text_every > 0 and s % a.text_every == a.text_every - 1)
        hi = hires(s) and not text_step
        if text_step:
            views.FAMILY_WEIGHTS.clear()
            views.FAMILY_WEIGHTS.update(TEXT_FAMILIES)
            d = views.sample_views(rng, a.batch, text_stage_at(step, a.text_steps))
            inputs, labels = batcher.text(d)
            lr = a.lr * min(1.0, (step + 1) / a.warmup) if s < 0 else lr_at(s, a.steps, a.lr, a.warmup)
        else:
            set_families(s)
            d = views.sample_views(rng, hires_batch if hi else a.batch, stage_at(s, a.steps), size=HIRES if hi else MODEL_INPUT)
            inputs, labels = batcher(d)
            lr = lr_at(s, a.steps, a.lr, a.warmup)
        t_data = time.time()
        for g in opt.param_groups:
            g["lr"] = lr
        out = model(**inputs, output_attentions=a.question_attn > 0 and not text_step)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        logits = out.logits[:, :-1]
        loss = answer_loss(logits, (ids, mask, labels), model.config.image_token_id, 0.0 if text_step else a.prompt_loss)
        if a.question_attn > 0 and not text_step:
            loss = loss + a.question_attn * question_attention_loss(out.attentions, ids, labels, naming_ids, q_layers, q_heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ok = first_token_hits(logits, labels)
        kind = "text-" if text_step else ""
        for fam, size, hit in zip(d["families"], d["sizes"], ok):
            agg[f"acc_{kind}{fam}"] += hit
            agg[f"n_{kind}{fam}"] += 1
            if fam == "reading" and not text_step:
                agg[f"acc_read-{size}"] += hit
                agg[f"n_read-{size}"] += 1
        res = "text" if text_step else ("128" if hi else "64")
        agg["loss"] += loss.item()
        agg["n"] += 1
        agg[f"data_s{res}"] += t_data - t0
        agg[f"step_s{res}"] += time.time() - t0
        agg[f"n{res}"] += 1
        if step % a.log_every == 0 or step == last:
            n = agg["n"]
            accs = " ".join(f"{k[4:]}={agg[k] / agg['n_' + k[4:]]:.2f}" for k in sorted(agg) if k.startswith("acc_"))
            per = " ".join(f"{r if r == 'text' else r + 'px'} {agg[f'step_s{r}'] / agg[f'n{r}']:.2f}s/step "
                           f"(data {agg[f'data_s{r}'] / agg[f'n{r}']:.2f})"
                           for r in ("text", "64", "128") if agg[f"n{r}"])
            where = "text" if s < 0 else f"stage {stage_at(s, a.steps)}"
            log(f"step {step}/{total} {where} lr {lr:.2e} "
                f"loss {agg['loss'] / n:.3f} train[{accs}] [{per}]")
            agg.clear()
        if step % a.ckpt_every == 0 or step == last:
            save_ckpt()
        if step % a.eval_every == 0 or step == last:
            evaluate()
        if step % a.export_every == 0 or step == last:
            export()
    views.FAMILY_WEIGHTS.clear()
    views.FAMILY_WEIGHTS.update(saved_families)
    log("done")


if __name__ == "__main__":
    main()
