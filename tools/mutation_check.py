"""Plant defects in the method core, one at a time, and check that the tests catch each.

    python tools/mutation_check.py [--only ID ...] [--out docs/mutation.md] [--list]

Each mutant is one textual replacement in one file of a temporary copy of the working tree (the file
must contain the original text exactly once, or the check stops naming the mutant: a refactoring that
moves the code must move the mutant too). The copy's tests named for that mutant run with pytest
(`-x`, one thread, `HF_HUB_OFFLINE=1`), importing the copy (PYTHONPATH; `laser.adapters` and
`laser.configs` linked to the copy's `adapters/` and `configs/` as an install maps them). A mutant is
caught when those tests fail; the table lists, per mutant, the outcome, the seconds and the first
failing test. The exit status is 1 when any mutant survives.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


ENGINE_TESTS = ("tests/test_wiring_references.py",)
MUTANTS = (
    # --- the six that survived the suite before tests/test_wiring_references.py
    Mutant("map-layer-0", "LASER's map taken from layer 0 instead of l*", "laser/method/engine.py",
           "chosen, _ = self._layer_map(rows, row_layers)", "chosen, _ = self._layer_map(rows, row_layers * 0)",
           ENGINE_TESTS),
    Mutant("streams-swapped", "generate() swaps the positive and the counterfactual stream",
           "laser/method/decoding.py", "vat_scores(z_pos, z[batch:], cfg.alpha)", "vat_scores(z[batch:], z_pos, cfg.alpha)",
           ENGINE_TESTS),
    Mutant("cut-on-p-minus", "the plausibility cut on the counterfactual stream's p- instead of p+",
           "laser/method/decoding.py", "vat_scores(z_pos, z[batch:], cfg.alpha), z_pos, cfg.beta)",
           "vat_scores(z_pos, z[batch:], cfg.alpha), z[batch:], cfg.beta)", ENGINE_TESTS),
    Mutant("vicrop-crop-only", "`vicrop` answers on the crop alone instead of original + crop",
           "laser/method/engine.py", 'if cfg.crop.input == "both" and self.adapter.supports_multi_image:',
           'if False and cfg.crop.input == "both":', ENGINE_TESTS),
    Mutant("pope-period", "POPE's text-before-the-first-period rule dropped (periods become spaces)",
           "laser/records/metrics.py", 'words = prediction.split(".", 1)[0].replace(",", "").split(" ")',
           'words = prediction.replace(".", " ").replace(",", "").split(" ")', ENGINE_TESTS),
    Mutant("vcd-step-off-by-one", "VCD's diffusion step off by one (alpha_bar of t + 1)", "laser/method/views.py",
           "return float(torch.cumprod(1 - betas, dim=0)[step])",
           "return float(torch.cumprod(1 - betas, dim=0)[min(step + 1, steps - 1)])", ENGINE_TESTS),
    # --- defects the suite caught before, kept so that it goes on catching them
    Mutant("relu-abs", "contrastive attention |a+ - a0| instead of relu(a+ - a0)", "laser/method/vaq.py",
           "return torch.relu(a_plus - a_zero)", "return torch.abs(a_plus - a_zero)",
           ENGINE_TESTS + ("tests/test_attention.py",)),
    Mutant("l2-l1", "VAQ[l,h] as the L1 norm instead of L2", "laser/method/vaq.py",
           "torch.linalg.vector_norm(c, ord=2, dim=-1)", "torch.linalg.vector_norm(c, ord=1, dim=-1)",
           ENGINE_TESTS + ("tests/test_attention.py",)),
    Mutant("crop-offset", "the crop window placed one canvas pixel off", "laser/method/crop.py",
           "x0 = min(max(round(col / sx), 0), width - size[0])", "x0 = min(max(round((col + 1) / sx), 0), width - size[0])",
           ("tests/test_crop.py",) + ENGINE_TESTS),
    Mutant("gate-strict", "the decode gate's l*/L >= depth made strict (>)", "laser/method/engine.py",
           "loc.layer / self.adapter.num_layers >= cfg.gate.depth", "loc.layer / self.adapter.num_layers > cfg.gate.depth",
           ("tests/test_engine.py",)),
    Mutant("mask-least-relevant", "LASER's masked view fills the least relevant cells", "laser/method/views.py",
           "key=lambda i: (-cells[i][2], i))[:count]", "key=lambda i: (cells[i][2], i))[:count]",
           ("tests/test_views.py",)),
    Mutant("layer-0-candidate", "VAQ's default candidates include layer 0", "laser/method/vaq.py",
           "return list(range(1, num_layers)) if num_layers > 1 else [0]", "return list(range(num_layers))",
           ("tests/test_vaq_layer_zero.py",) + ENGINE_TESTS),
    Mutant("ties-inexact", "ViCrop's cell weights left unrounded (tied windows break by float noise)",
           "laser/method/canvas.py", "return torch.round(share * WEIGHT_GRID) / WEIGHT_GRID", "return share",
           ("tests/test_baselines_reference.py",)),
    Mutant("one-stream-per-batch", "answer_batch without seeds: one random stream for the whole batch",
           "laser/method/engine.py", "seeds = [content_seed(self.config.seed, im, q) for im, q in zip(converted, questions)]",
           "seeds = [self.config.seed] * len(converted)", ("tests/test_seeding.py",)),
    # --- runs
    Mutant("resume-ignores-written", "a resumed run ignores the ids already written", "laser/run/predict.py",
           "done = completed_ids(output_dir) if launch.main else None", "done = set() if launch.main else None",
           ("tests/test_reliability_runs.py", "tests/test_predict_cli.py")),
    Mutant("retryable-done", "a retryable error record counted as done", "laser/records/files.py",
           "for path, n, r in _iter_records(output_dir) if not is_retryable_record(r)",
           "for path, n, r in _iter_records(output_dir)", ("tests/test_retryable.py", "tests/test_writer.py")),
    Mutant("per-rank-seeds", "sample seeds depend on the rank", "laser/run/lightning.py",
           'seeds = [sample_seed(self.seed, s["sample_id"]) for s in group]',
           'seeds = [sample_seed(self.seed + self.global_rank + 1, s["sample_id"]) for s in group]',
           ("tests/test_seeding.py",)),
    Mutant("salloc-interactive", "srun steps inside salloc not seen as SLURM-managed", "laser/run/predict.py",
           'return bool(env.get("SLURM_STEP_ID")) and env.get("SLURM_PROCID") is not None and ntasks > 1',
           "return False", ("tests/test_cluster.py::test_detect_launch_follows_lightning_cluster_environments",)),
    Mutant("claim-read-no-retry", "a claim mid-write is judged at once (no settle)", "laser/run/claim.py",
           "holder = read_settled_claim(self.folder)", "holder = read_claim(self.folder)",
           ("tests/test_claim.py::test_a_claim_being_written_is_read_once_whole_not_taken_for_another_run",)),
)


def working_tree_copy(dest: Path) -> None:
    """Tracked and untracked (not ignored) files of the checkout, as they are now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for package, folder in (("adapters", "adapters"), ("configs", "configs")):
        link = dest / "laser" / package
        if not link.exists():
            link.symlink_to(dest / folder, target_is_directory=True)


def plant(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.id}: {mutant.path} holds its original text {count} times (expected 1): "
                         f"{mutant.old!r}")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str, float]:
    """(caught, first failing test or note, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
    if result.returncode == 0:
        return False, "all passed", seconds
    return True, failed[0] if failed else f"pytest exit {result.returncode}", seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutant ids to check (default: all)")
    ap.add_argument("--out", help="write the table (Markdown) here too")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's tests")
    a = ap.parse_args()
    mutants = [m for m in MUTANTS if not a.only or m.id in a.only]
    if a.list:
        for m in mutants:
            print(f"{m.id:<24} {m.path:<26} {m.what}")
        return 0
    unknown = set(a.only or ()) - {m.id for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant ids: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="laser-mutants-") as tmp:
        pristine = Path(tmp) / "pristine"
        pristine.mkdir()
        working_tree_copy(pristine)
        env = dict(os.environ, PYTHONPATH=str(pristine))
        where = subprocess.run([sys.executable, "-c", "import laser.adapters as a; print(a.__file__)"], cwd=pristine,
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(pristine.resolve()):
            raise SystemExit(f"the copy's tests would import laser from {where}, not from the copy")
        for m in mutants:  # every mutant's original text must be where it says, before anything runs
            if (pristine / m.path).read_text().count(m.old) != 1:
                plant(pristine, m)  # raises naming the mutant
        rows = []
        for m in mutants:
            copy = Path(tmp) / m.id
            shutil.copytree(pristine, copy, symlinks=True)
            plant(copy, m)
            caught, note, seconds = run_tests(copy, m.tests, a.timeout)
            rows.append((m, caught, note, seconds))
            print(f"{m.id:<24} {'caught' if caught else 'SURVIVED':<9} {seconds:6.1f} s  {note}", flush=True)
            shutil.rmtree(copy)
    survived = [m.id for m, caught, _, _ in rows if not caught]
    lines = ["| mutant | defect planted | file | outcome | tests run | first failing test | s |", "|---|---|---|---|---|---|---|"]
    for m, caught, note, seconds in rows:
        tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in m.tests)
        lines.append(f"| `{m.id}` | {m.what} | `{m.path}` | {'caught' if caught else '**survived**'} | {tests} | "
                     f"`{note}` | {seconds:.0f} |")
    table = "\n".join(lines)
    print(f"\n{len(rows) - len(survived)} of {len(rows)} planted defects caught" + (
        f"; survived: {', '.join(survived)}" if survived else ""))
    if a.out:
        header = (
            "# Planted defects and the tests that catch them\n\n"
            "`python tools/mutation_check.py --out docs/mutation.md` plants each defect below, one at a time, in a "
            "temporary copy of the working tree and runs the tests named for it (pytest `-x`); a defect is caught "
            "when they fail. The list lives in `tools/mutation_check.py` (`MUTANTS`).\n\n"
        )
        Path(a.out).write_text(header + table + f"\n\n{len(rows) - len(survived)} of {len(rows)} caught.\n")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
