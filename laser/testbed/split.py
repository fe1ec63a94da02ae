"""The shipped evaluation split: `materialize_split(out_dir, n_scenes, seed)` writes
`eval.jsonl` (one question per line) and `images/scene_XXXXXXXX.png`, deterministically.

Eval scene seeds are `EVAL_SEED_BASE + seed * 10_000 + i` (>= 10,000,000); training uses seeds below
`EVAL_SEED_BASE`, so no eval scene is ever seen in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .scenes import make_questions, make_scene, render_scene

EVAL_SEED_BASE = 10_000_000
DEFAULT_SEED = 0
DEFAULT_SCENES = 200
QUESTIONS_PER_SCENE = 4


def eval_scene_seeds(n_scenes: int, seed: int = DEFAULT_SEED) -> list[int]:
    return [EVAL_SEED_BASE + seed * 10_000 + i for i in range(n_scenes)]


def split_records(n_scenes: int = DEFAULT_SCENES, seed: int = DEFAULT_SEED, per_scene: int = QUESTIONS_PER_SCENE):
    """Yield (scene, image_relpath, [records]) without touching the disk."""
    for scene_seed in eval_scene_seeds(n_scenes, seed):
        scene = make_scene(scene_seed)
        rel = f"images/scene_{scene_seed}.png"
        qs = make_questions(scene, random.Random(scene_seed + 1), n=per_scene)
        recs = [
            {"sample_id": f"testbed-{scene_seed}-{k}", "image": rel, "question": q["question"],
             "answers": q["answers"], "meta": q["meta"]}
            for k, q in enumerate(qs)
        ]
        yield scene, rel, recs


def materialize_split(out_dir, n_scenes: int = DEFAULT_SCENES, seed: int = DEFAULT_SEED,
                      per_scene: int = QUESTIONS_PER_SCENE, write_images: bool = True) -> Path:
    """Write `out_dir/eval.jsonl` and `out_dir/images/`; returns the jsonl path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "eval.jsonl"
    with path.open("w") as f:
        for scene, rel, recs in split_records(n_scenes, seed, per_scene):
            if write_images:
                render_scene(scene).save(out / rel, optimize=True)
            for r in recs:
                f.write(json.dumps(r) + "\n")
    return path


def load_split(path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
