"""Train the testbed LVLM from scratch on CPU (resumable).

python tools/train_testbed.py --run testbed_work/run1 [--minutes 75 --batch 32 --lr 1e-3]

LR schedule and curriculum follow the training time spent (the CPU is shared), not the step count.

Recipe of the shipped checkpoint (about 90 CPU-minutes, 1 thread, shared machine):
  1. python tools/train_testbed.py --run testbed_work/run1 --minutes 49 --vision-minutes 18 --batch 32 --warmup 200
     (joint run for ~19 min, then 18 min of vision-only warm-up: grid-aligned boxes -> jittered ->
     random zooms, box-pooled digit loss; then joint again; the LM was still at chance on reading)
  2. python tools/train_testbed.py --run testbed_work/run2 --init testbed_work/run1_final.pt --freeze-vision \
       --lr 2e-3 --warmup 20 --minutes 22 --batch 32 --aux 0 --attn-aux 0.3 --stages 0,2,0,1 \
       --families '{"reading": 0.55, "relational": 0.2, "existence": 0.12, "color": 0.05, "count": 0.0, "where": 0.08}'
     (frozen vision tower, reading-heavy mix: the LM learns to read the pooled features in ~10 min)
  3. python tools/train_testbed.py --run testbed_work/run3 --init testbed_work/run2/last.pt --freeze-vision \
       --lr 5e-4 --warmup 20 --minutes 20 --batch 32 --aux 0 --attn-aux 0.3 --attn-layers 1,2,3 \
       --stages 0,2,0,1 --eval-every 600 --families (as in 2)
     (the attention loss extended to the last layer: after step 2, VAQ chose layer 3, whose map was
     not on the target, for most reading questions)
The attention loss supervises heads 0-1 of the listed LM layers (`--attn-layers`, default 1,2): the last
prompt token attends to the target box.

Views: random zooms of generated scenes (curriculum: stage 0 one or two big boxes, stage 1 a few
boxes, stage 2 the eval distribution). Loss: answer tokens only, plus an auxiliary per-patch
digit / colour loss on the vision tower (heads not exported). Every `--ckpt-min` minutes the full
state goes to RUN/last.pt (re-running resumes); every `--export-min` minutes the best model so far
(by first-token accuracy on a held-out part of the eval split) is exported to --export.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from testbed.model import answer_ids, build_model, build_processor, build_tokenizer, prompt_ids  # noqa: E402
from testbed.quick_eval import first_token_eval  # noqa: E402
from testbed.views import sample_views  # noqa: E402

from laser.testbed.scenes import COLOR_NAMES  # noqa: E402
from laser.testbed.split import load_split  # noqa: E402


def stage_for(progress: float) -> int:
    return "a1" if progress < 0.08 else (1 if progress < 0.25 else 2)


class Batcher:
    def __init__(self, tok, processor):
        self.tok = tok
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.cache: dict[str, list[int]] = {}

    def ids(self, q):
        if q not in self.cache:
            self.cache[q] = prompt_ids(self.tok, q)
        return self.cache[q]

    def __call__(self, d):
        seqs, labs = [], []
        for q, a in zip(d["questions"], d["answers"]):
            p, t = self.ids(q), answer_ids(self.tok, a)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        L = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs])
        labels = torch.tensor([[-100] * (L - len(s)) + lb for s, lb in zip(seqs, labs)])
        mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs])
        px = torch.from_numpy(d["pixels"]).permute(0, 3, 1, 2).float() / 255.0
        px = (px - self.mean) / self.std
        return (ids, mask, labels, px, torch.from_numpy(d["digit_labels"]), torch.from_numpy(d["color_labels"]),
                torch.from_numpy(d["attn_targets"]))


def vision_aux(heads, h, d, cl):
    """Box-pooled digit CE (mean of the box's patch features) + per-patch colour CE."""
    loss = F.cross_entropy(heads["color"](h).reshape(-1, len(COLOR_NAMES) + 1), cl.reshape(-1))
    if len(d["box_view"]):
        m = torch.from_numpy(d["box_mask"])
        feats = (h[torch.from_numpy(d["box_view"])] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        loss = loss + F.cross_entropy(heads["box_digit"](feats), torch.from_numpy(d["box_digit"]))
    return loss


def vision_pretrain(model, heads, rng, minutes, log, batch=64):
    """Vision tower + aux heads only (cheap steps): learn to read large digits before the LM joins."""
    vt = model.model.vision_tower
    params = list(vt.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    ip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    ip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    t_end, step, acc, n = time.time() + minutes * 60, 0, 0.0, 0
    while time.time() < t_end:
        frac = 1 - (t_end - time.time()) / (minutes * 60)
        stage = "a0" if frac < 0.3 else ("a1" if frac < 0.55 else (0 if frac < 0.8 else 2))
        d = sample_views(rng, batch, stage, views_per_scene=12)
        px = (torch.from_numpy(d["pixels"]).permute(0, 3, 1, 2).float() / 255.0 - ip_mean) / ip_std
        h = vt(px).last_hidden_state[:, 1:]
        cl = torch.from_numpy(d["color_labels"])
        loss = vision_aux(heads, h, d, cl)
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
        step += 1
        if step % 50 == 0:
            log(f"vision pretrain step {step} stage {stage} loss {loss.item():.3f} box-digit acc {acc / max(n, 1):.3f}")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "testbed_work/run1"))
    ap.add_argument("--export", default=str(ROOT / "laser/assets/testbed/model"))
    ap.add_argument("--minutes", type=float, default=75.0, help="training-time budget (LR schedule, curriculum)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--aux", type=float, default=0.5)
    ap.add_argument("--attn-aux", type=float, default=0.3)
    ap.add_argument("--attn-layers", default="1,2", help="LM layers whose heads the attention loss supervises")
    ap.add_argument("--attn-heads", default="0,1", help="heads (in each supervised layer) the attention loss supervises")
    ap.add_argument("--init", default="", help="start a new run from this checkpoint's model/heads")
    ap.add_argument("--freeze-vision", action="store_true")
    ap.add_argument("--families", default="", help='JSON family weights, e.g. {"reading": 0.6, ...}')
    ap.add_argument("--stages", default="", help="comma-separated stages cycled per step (overrides the curriculum)")
    ap.add_argument("--vision-minutes", type=float, default=0.0, help="vision-only pre-training (once per run)")
    ap.add_argument("--ckpt-min", type=float, default=4.0)
    ap.add_argument("--export-min", type=float, default=10.0)
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
        from laser.testbed import data as tb_data

        tb_data.FAMILY_WEIGHTS.update(json.loads(a.families))
    if a.init and not (run / "last.pt").exists():
        st0 = torch.load(a.init, weights_only=False)
        model.load_state_dict(st0["model"])
        heads.load_state_dict(st0["heads"], strict=False)
        log(f"initialised from {a.init} (step {st0['step']})")
    if a.freeze_vision:
        for p_ in model.model.vision_tower.parameters():
            p_.requires_grad = False
    params = [p_ for p_ in model.parameters() if p_.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, best, trained_s = 0, -1.0, 0.0
    rng = random.Random(a.seed)
    ck = run / "last.pt"
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        heads.load_state_dict(st["heads"], strict=False)
        if len(st["opt"]["param_groups"][0]["params"]) == len(params):
            opt.load_state_dict(st["opt"])
        step, best, trained_s = st["step"], st["best"], st.get("trained_s", 0.0)
        rng.setstate(st["rng"])
        log(f"resumed from step {step} (best {best:.3f})")
    else:
        log(f"new run: {json.dumps(vars(a))}; params {sum(p.numel() for p in model.parameters())}")

    vdone = bool(a.init) or (ck.exists() and torch.load(ck, weights_only=False).get("vision_done", False))
    if a.vision_minutes > 0 and not vdone:
        vision_pretrain(model, heads, rng, a.vision_minutes, log)
        vdone = True
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))

    captured = {}
    model.model.vision_tower.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o.last_hidden_state))
    batcher = Batcher(tok, proc)
    eval_recs = load_split(ROOT / "laser/assets/testbed/eval.jsonl")
    held = [r for r in eval_recs if int(r["meta"]["scene_seed"]) % 2 == 1][:240]
    img_root = ROOT / "laser/assets/testbed"

    budget = a.minutes * 60.0
    attn_layers = tuple(int(x) for x in a.attn_layers.split(","))
    attn_heads = tuple(int(x) for x in a.attn_heads.split(","))

    def lr_at(s):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        p = min(1.0, trained_s / budget)
        return a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    def save_ckpt():
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                    "step": step, "best": best, "trained_s": trained_s, "vision_done": vdone, "rng": rng.getstate()}, run / "tmp.pt")
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
    t_ckpt = t_export = time.time()
    agg = defaultdict(float)
    t0 = time.time()
    while trained_s < budget:
        stage = stage_for(trained_s / budget)
        if a.stages:
            stage = [int(x) if x.isdigit() else x for x in a.stages.split(",")][step % len(a.stages.split(","))]
        d = sample_views(rng, a.batch, stage)
        t_data = time.time()
        ids, mask, labels, px, dl, cl, at = batcher(d)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=px, output_attentions=a.attn_aux > 0)
        logits = out.logits[:, :-1]
        lm = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        h = captured["h"][:, 1:]
        aux = vision_aux(heads, h, d, cl)
        w = a.aux if trained_s < budget * 0.7 else a.aux * 0.3
        att_l = attention_loss(out.attentions, ids, labels, at, model.config.image_token_id,
                                                 layers=attn_layers, heads=attn_heads) if a.attn_aux > 0 else torch.zeros(())
        loss = lm + w * aux + a.attn_aux * att_l
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
        agg["data_s"] += t_data - t0
        agg["step_s"] += time.time() - t0
        agg["n"] += 1
        trained_s += time.time() - t0
        t0 = time.time()
        step += 1
        if step % 50 == 0:
            n = agg["n"]
            accs = " ".join(f"{k[4:]}={agg[k] / agg['n_' + k[4:]]:.2f}" for k in sorted(agg) if k.startswith("acc_"))
            log(f"step {step} t {trained_s / 60:.1f}m stage {stage} lr {lr_at(step):.2e} lm {agg['lm'] / n:.3f} aux {agg['aux'] / n:.3f} att {agg['att'] / n:.3f} "
                f"train[{accs}] {agg['step_s'] / n:.2f}s/step (data {agg['data_s'] / n:.2f})")
            agg.clear()
        if step % a.eval_every == 0:
            evaluate_and_maybe_keep()
            t0 = time.time()
        if time.time() - t_ckpt > a.ckpt_min * 60:
            save_ckpt()
            t_ckpt = t0 = time.time()
        if time.time() - t_export > a.export_min * 60 and (run / "best_model.pt").exists():
            export(run, a.export, tok, proc, log)
            t_export = t0 = time.time()
    evaluate_and_maybe_keep()
    save_ckpt()
    export(run, a.export, tok, proc, log)
    log("done")


def export(run: Path, out: str, tok, proc, log):
    model = build_model(tok)
    model.load_state_dict(torch.load(run / "best_model.pt"))
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    log(f"exported best model to {out}")


if __name__ == "__main__":
    main()
