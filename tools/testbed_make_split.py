"""Regenerate the shipped testbed split: python tools/testbed_make_split.py [--scenes 200 --seed 0]."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import collections

from laser.paths import assets_dir
from laser.testbed.split import load_split, materialize_split

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(assets_dir() / "testbed"))
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    path = materialize_split(a.out, a.scenes, a.seed)
    recs = load_split(path)
    print(path, len(recs))
    print(collections.Counter((r["meta"]["family"], r["meta"]["size"]) for r in recs))
