"""Train the testbed LVLM from scratch on CPU: step-driven and seeded, resumable.

    python tools/train_testbed.py --run testbed_work/run1 --steps 3000 [--seed 0 --batch 32 --lr 1e-3]

Everything that shapes the model follows the step count, never the clock: the LR schedule (linear
warm-up, cosine to 5%), the curriculum (stage "a1", 1, then 2 over the run), the auxiliary-loss weight,
vision pre-training (`--vision-steps`), evaluation, checkpoints and exports. The same command, seed and
torch version give the same model on the same hardware (one thread), and a run resumed from RUN/last.pt
(model, optimiser, step, best score and both RNG states) continues where it stopped.

Views: random zooms of generated scenes (curriculum: stage 0 one or two big boxes, stage 1 a few
boxes, stage 2 the eval distribution, alternating with stage "q", the same scenes framed so the question
decides). Loss: answer tokens only, plus an auxiliary per-patch
digit / colour loss on the vision tower (heads not exported), plus an attention loss: heads
`--attn-heads` (default 0,1) of LM layers `--attn-layers` (default 1,2) attend from the last prompt token to the
target box. Every `--eval-every` steps the model is scored (first-token accuracy on 240 questions of the
eval split's odd-seeded scenes) and the best so far kept; it is exported to `--export` every
`--export-every` steps and at the end.

The shipped checkpoint (laser/assets/testbed/model) is rebuilt from nothing by three runs of this script,
`tools/testbed/rebuild_testbed.sh` (their exact command lines are in the checkpoint's
`training_commands.txt`). An earlier checkpoint (commit 60286c1) came from a version whose schedule followed
wall-clock time; it could not be rebuilt and was replaced.
Every run now records its exact command line in RUN/commands.txt (after those of the run `--init`
started from), and an export copies that file to `<export>/training_commands.txt`: a checkpoint made
with this version says how to make it again.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from testbed.batching import AnswerBatcher  # noqa: E402
from testbed.model import build_model, build_processor, build_tokenizer  # noqa: E402
from testbed.quick_eval import first_token_eval  # noqa: E402
from testbed.views import FAMILY_WEIGHTS, sample_views  # noqa: E402

from laser.testbed.scenes import COLOR_NAMES  # noqa: E402
from laser.testbed.split import load_split  # noqa: E402


CURRICULUM_LATE = (2, "q")
"""After the first quarter: the evaluation distribution and its question-deciding framing, alternately."""


def stage_for(step: int, steps: int) -> int | str:
    """Curriculum stage at `step` of `steps`."""
    progress = step / steps
    return "a1" if progress < 0.08 else (1 if progress < 0.25 else CURRICULUM_LATE[step % 2])


class Batcher(AnswerBatcher):
    """`AnswerBatcher`'s tensors plus the auxiliary targets: digit and colour labels, attention targets."""

    def __call__(self, d):
        return (*super().__call__(d), torch.from_numpy(d["digit_labels"]), torch.from_numpy(d["color_labels"]),
                torch.from_numpy(d["attn_targets"]))


def vision_aux(heads, h, d, cl, patch_digit: float = 0.0):
    """Box-pooled digit CE (mean of the box's patch features) + per-patch colour CE; with `patch_digit` > 0
    also a per-patch digit CE (every patch of a readable box carries its box's digit, background "none"),
    so that one patch token holds both its box's colour and its digit."""
    loss = F.cross_entropy(heads["color"](h).reshape(-1, len(COLOR_NAMES) + 1), cl.reshape(-1))
    if patch_digit > 0:
        dl = torch.from_numpy(d["digit_labels"]).reshape(-1)
        loss = loss + patch_digit * F.cross_entropy(heads["digit"](h).reshape(-1, 11), dl, ignore_index=-100)
    if len(d["box_view"]):
        m = torch.from_numpy(d["box_mask"])
        feats = (h[torch.from_numpy(d["box_view"])] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        loss = loss + F.cross_entropy(heads["box_digit"](feats), torch.from_numpy(d["box_digit"]))
    return loss


def vision_pretrain(model, heads, rng, steps, log, batch=64, patch_digit: float = 0.0):
    """Vision tower + aux heads only (cheap steps): learn to read large digits before the LM joins."""
    vt = model.model.vision_tower
    params = list(vt.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    ip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    ip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    acc, n = 0.0, 0
    for step in range(steps):
        frac = step / steps
        stage = "a0" if frac < 0.3 else ("a1" if frac < 0.55 else (0 if frac < 0.8 else 2))
        d = sample_views(rng, batch, stage, views_per_scene=12)
        px = (torch.from_numpy(d["pixels"]).permute(0, 3, 1, 2).float() / 255.0 - ip_mean) / ip_std
        h = vt(px).last_hidden_state[:, 1:]
        cl = torch.from_numpy(d["color_labels"])
        loss = vision_aux(heads, h, d, cl, patch_digit)
        for g in opt.param_groups:
            g["lr"] = 1.5e-3 * min(1.0, (step + 1) / 50) * (1.0 - 0.7 * frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            if len(d["box_view"]):
                m = torch.from_numpy(d["box_mask"])
                feats = (h[torch.from_numpy(d["box_view"])] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
                acc += (heads["box_digit"](feats).argmax(-1) == torch.from_numpy(d["box_digit"])).float().sum().item()
                n += len(d["box_view"])
        if (step + 1) % 50 == 0:
            log(f"vision pretrain step {step + 1}/{steps} stage {stage} loss {loss.item():.3f} "
                f"box-digit acc {acc / max(n, 1):.3f}")
            acc, n = 0.0, 0


def attention_loss(attentions, ids, labels, targets, image_token_id, layers=(1, 2), heads=(0, 1)):
    """-log(attention mass of the last prompt token on the target patches), for chosen layers/heads."""
    sup = targets.sum(1) > 0
    if not sup.any():
        return torch.zeros(())
    first = (labels != -100).float().argmax(1) - 1  # last prompt position
    img_pos = (ids == image_token_id).nonzero()[:, 1].view(ids.size(0), -1)  # [B, 64]
    total = 0.0
    for layer in layers:
        att = attentions[layer][:, list(heads)]  # [B, h, L, L]
        rows = att[torch.arange(ids.size(0)), :, first]  # [B, h, L]
        on_img = rows.gather(2, img_pos[:, None, :].expand(-1, rows.size(1), -1))  # [B, h, 64]
        mass = (on_img * targets[:, None, :]).sum(-1)
        total = total - torch.log(mass[sup] + 1e-4).mean()
    return total / len(layers)


NAMING_WORDS = (*COLOR_NAMES, *(str(d) for d in range(10)), "left", "right", "above", "below")
"""Question words that name the evidence: colours, digits, relations (`question_attention_loss`)."""


def question_attention_loss(attentions, ids, labels, naming_ids, layers=(0,), heads=(0, 1)):
    """-log(attention mass of the last prompt token on the question's naming words), for chosen
    layers/heads: the last token reads which box is asked about before later layers look for it."""
    first = (labels != -100).float().argmax(1) - 1  # last prompt position
    naming = torch.isin(ids, naming_ids) & (labels == -100)  # naming words of the prompt (not the answer)
    positions = torch.arange(ids.size(1))[None, :]
    naming &= positions < first[:, None]
    sup = naming.any(1)
    if not sup.any():
        return torch.zeros(())
    total = 0.0
    for layer in layers:
        rows = attentions[layer][torch.arange(ids.size(0)), :, first][:, list(heads)]  # [B, h, L]
        mass = (rows * naming[:, None, :]).sum(-1)
        total = total - torch.log(mass[sup] + 1e-4).mean()
    return total / len(layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "testbed_work/run1"))
    ap.add_argument("--export", default=str(ROOT / "laser/assets/testbed/model"))
    ap.add_argument("--steps", type=int, required=True, help="joint training steps (LR schedule, curriculum)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--aux", type=float, default=0.5)
    ap.add_argument("--attn-aux", type=float, default=0.3)
    ap.add_argument("--attn-layers", default="1,2", help="LM layers whose heads the attention loss supervises")
    ap.add_argument("--attn-heads", default="0,1", help="heads (in each supervised layer) the attention loss supervises")
    ap.add_argument("--question-attn", type=float, default=0.0,
                    help="weight of the question-attention loss: the last prompt token attends to the words naming the box")
    ap.add_argument("--question-attn-layers", default="0", help="LM layers that loss supervises")
    ap.add_argument("--question-attn-heads", default="2,3", help="heads (in each of those layers) it supervises")
    ap.add_argument("--init", default="", help="start a new run from this checkpoint's model/heads")
    ap.add_argument("--freeze-vision", action="store_true")
    ap.add_argument("--families", default="", help='JSON family weights, e.g. {"reading": 0.6, ...}')
    ap.add_argument("--stages", default="", help="comma-separated stages cycled per step (overrides the curriculum)")
    ap.add_argument("--vision-steps", type=int, default=0, help="vision-only pre-training steps (once per run)")
    ap.add_argument("--ckpt-every", type=int, default=200, help="steps between resumable checkpoints")
    ap.add_argument("--export-every", type=int, default=1000, help="steps between exports of the best model")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    logf = open(run / "train.log", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    torch.manual_seed(a.seed)
    tok = build_tokenizer()
    proc = build_processor(tok)
    model = build_model(tok)
    model.set_attn_implementation("eager")  # attention maps for the attention loss (export uses sdpa)
    vh = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({"digit": torch.nn.Linear(vh, 11), "color": torch.nn.Linear(vh, len(COLOR_NAMES) + 1),
                                  "box_digit": torch.nn.Linear(vh, 10)})
    if a.families:
        FAMILY_WEIGHTS.update(json.loads(a.families))
    ck = run / "last.pt"
    if a.init and not ck.exists():
        st0 = torch.load(a.init, weights_only=False)
        model.load_state_dict(st0["model"])
        heads.load_state_dict(st0["heads"], strict=False)
        log(f"initialised from {a.init} (step {st0['step']})")
    if a.freeze_vision:
        for p_ in model.model.vision_tower.parameters():
            p_.requires_grad = False
    params = [p_ for p_ in model.parameters() if p_.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, best, vdone = 0, -1.0, bool(a.init)
    rng = random.Random(a.seed)
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        heads.load_state_dict(st["heads"], strict=False)
        opt.load_state_dict(st["opt"])
        step, best, vdone = st["step"], st["best"], st["vision_done"]
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed from step {step} (best {best:.3f})")
    else:
        record_command(run, a.init)
        log(f"new run: {json.dumps(vars(a))}; params {sum(p.numel() for p in model.parameters())}")

    if a.vision_steps > 0 and not vdone:
        vision_pretrain(model, heads, rng, a.vision_steps, log)
        vdone = True
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))

    captured = {}
    model.model.vision_tower.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o.last_hidden_state))
    batcher = Batcher(tok, proc)
    eval_recs = load_split(ROOT / "laser/assets/testbed/eval.jsonl")
    held = [r for r in eval_recs if int(r["meta"]["scene_seed"]) % 2 == 1][:240]
    img_root = ROOT / "laser/assets/testbed"

    naming_ids = torch.tensor(tok.convert_tokens_to_ids(list(NAMING_WORDS)))
    q_layers = tuple(int(x) for x in a.question_attn_layers.split(","))
    q_heads = tuple(int(x) for x in a.question_attn_heads.split(","))
    attn_layers = tuple(int(x) for x in a.attn_layers.split(","))
    attn_heads = tuple(int(x) for x in a.attn_heads.split(","))
    cycle = [int(x) if x.isdigit() else x for x in a.stages.split(",")] if a.stages else None

    def lr_at(s):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        p = min(1.0, s / a.steps)
        return a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    def save_ckpt():
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                    "step": step, "best": best, "vision_done": vdone, "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state()}, run / "tmp.pt")
        (run / "tmp.pt").replace(ck)

    def evaluate_and_maybe_keep():
        nonlocal best
        model.eval()
        res = first_token_eval(model, proc, held, img_root, batch=48)
        model.train()
        for view, accs in res.items():
            log(f"eval step {step} {view}: " + " ".join(f"{k}={v[0]:.2f}({v[1]})" for k, v in sorted(accs.items())))
        o, f = res["oracle"], res["full"]
        score = o["reading/all"][0] + o["relational/all"][0] + f["existence/all"][0]
        if score > best:
            best = score
            torch.save(model.state_dict(), run / "best_model.pt")
            log(f"new best score {score:.3f} at step {step}")

    model.train()
    agg = defaultdict(float)
    t0 = time.time()
    while step < a.steps:
        stage = cycle[step % len(cycle)] if cycle else stage_for(step, a.steps)
        d = sample_views(rng, a.batch, stage)
        t_data = time.time()
        ids, mask, labels, px, dl, cl, at = batcher(d)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=px,
                    output_attentions=a.attn_aux > 0 or a.question_attn > 0)
        logits = out.logits[:, :-1]
        lm = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        h = captured["h"][:, 1:]
        aux = vision_aux(heads, h, d, cl)
        w = a.aux if step < 0.7 * a.steps else a.aux * 0.3
        att_l = attention_loss(out.attentions, ids, labels, at, model.config.image_token_id,
                                                 layers=attn_layers, heads=attn_heads) if a.attn_aux > 0 else torch.zeros(())
        q_l = question_attention_loss(out.attentions, ids, labels, naming_ids, q_layers, q_heads) \
            if a.question_attn > 0 else torch.zeros(())
        loss = lm + w * aux + a.attn_aux * att_l + a.question_attn * q_l
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            pos = labels[:, 1:] != -100
            first = pos & (pos.cumsum(1) == 1)
            pred = logits.argmax(-1)[first]
            gold = labels[:, 1:][first]
            for fam, ok in zip(d["families"], (pred == gold).tolist()):
                agg[f"acc_{fam}"] += ok
                agg[f"n_{fam}"] += 1
        agg["lm"] += lm.item()
        agg["aux"] += aux.item()
        agg["att"] += float(att_l)
        agg["qatt"] += float(q_l)
        agg["data_s"] += t_data - t0
        agg["step_s"] += time.time() - t0
        agg["n"] += 1
        t0 = time.time()
        step += 1
        if step % 50 == 0:
            n = agg["n"]
            accs = " ".join(f"{k[4:]}={agg[k] / agg['n_' + k[4:]]:.2f}" for k in sorted(agg) if k.startswith("acc_"))
            log(f"step {step}/{a.steps} stage {stage} lr {lr_at(step):.2e} lm {agg['lm'] / n:.3f} aux {agg['aux'] / n:.3f} "
                f"att {agg['att'] / n:.3f} qatt {agg['qatt'] / n:.3f} train[{accs}] {agg['step_s'] / n:.2f}s/step (data {agg['data_s'] / n:.2f})")
            agg.clear()
        if step % a.eval_every == 0:
            evaluate_and_maybe_keep()
        if step % a.ckpt_every == 0:
            save_ckpt()
        if step % a.export_every == 0 and (run / "best_model.pt").exists():
            export(run, a.export, tok, proc, log)
        t0 = time.time()
    evaluate_and_maybe_keep()
    save_ckpt()
    export(run, a.export, tok, proc, log)
    log("done")


def record_command(run: Path, init: str) -> None:
    """Append this command to RUN/commands.txt, after those of the run `--init` started from."""
    lines = []
    previous = Path(init).parent / "commands.txt" if init else None
    if previous is not None and previous.is_file():
        lines += previous.read_text().splitlines()
    lines.append("python tools/train_testbed.py " + shlex.join(sys.argv[1:]))
    (run / "commands.txt").write_text("\n".join(lines) + "\n")


def export(run: Path, out: str, tok, proc, log):
    model = build_model(tok)
    model.load_state_dict(torch.load(run / "best_model.pt"))
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    shutil.copyfile(run / "commands.txt", Path(out) / "training_commands.txt")  # how this checkpoint was made
    log(f"exported best model to {out}")


if __name__ == "__main__":
    main()
