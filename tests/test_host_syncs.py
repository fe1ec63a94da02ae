"""Host synchronisations while decoding: at most 2 per generated token, at batch 1 and 8, direct and
contrastive (issue 14). On a GPU each one stalls the host until the device catches up.

Counted: the ops that read a device value on the host (`item`, `_local_scalar_dense`, `nonzero`,
`is_nonzero`: Python `bool`/`int` of a tensor included) and `tolist` / `numpy` / `cpu` calls. Per token
is the marginal count, (syncs at N2 tokens - syncs at N1) / (N2 - N1), so the prompt's one-off checks (the
model's image-token count, the padding check) do not hide in it; those are bounded separately. Batch 8
mixes question lengths, so its prompts are padded (the model's attention-mask check runs every step).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from laser import LaserConfig, LaserEngine

SYNC_OPS = {"item", "_local_scalar_dense", "nonzero", "is_nonzero"}
SYNC_METHODS = {"tolist", "numpy", "cpu"}
QUESTIONS = ["What is the color ?", "Is there a red box on the left ?", "How many", "What digit is in the box ?"]


class _Ops(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """Counts host synchronisations inside the block: `with HostSyncs() as syncs: ...; syncs.total`."""

    def __enter__(self) -> HostSyncs:
        self.counts: Counter = Counter()
        self._modes = [_Methods(self.counts), _Ops(self.counts)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def test_counter_sees_each_kind_of_sync():
    t = torch.tensor([1, 0, 2])
    with HostSyncs() as syncs:
        int(t[0])
        bool(t[1])
        t.nonzero()
        t.tolist()
        t.max().item()
    assert syncs.total == 5, syncs.counts


def _decode_syncs(adapter, monkeypatch, images, preset: str, new_tokens: int) -> int:
    """Host syncs inside the engine's decoding (`generate`) for one batch, answers `new_tokens` long."""
    import laser.method.engine as engine_module

    counted = []
    real_generate = engine_module.generate

    def counting_generate(*args, **kwargs):
        with HostSyncs() as syncs:
            out = real_generate(*args, **kwargs)
        counted.append(syncs.total)
        return out

    monkeypatch.setattr(engine_module, "generate", counting_generate)
    engine = LaserEngine(adapter, LaserConfig.preset(preset, **{"decode.max_new_tokens": new_tokens}))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(images))]
    predictions = engine.answer_batch(images, questions)
    assert all(len(p.token_ids) == new_tokens for p in predictions)
    assert len(counted) == 1
    return counted[0]


@pytest.mark.parametrize("preset", ["vanilla", "vcd"], ids=["direct", "contrastive"])
@pytest.mark.parametrize("batch", [1, 8])
def test_at_most_two_host_syncs_per_token(llava_adapter, monkeypatch, batch, preset):
    from conftest import random_image

    monkeypatch.setattr(llava_adapter, "eos_token_ids", lambda: [-1])  # every answer runs to its limit
    images = [random_image(120 + 20 * i, 100, seed=i) for i in range(batch)]
    short, long = 2, 6
    few = _decode_syncs(llava_adapter, monkeypatch, images, preset, short)
    many = _decode_syncs(llava_adapter, monkeypatch, images, preset, long)
    per_token = (many - few) / (long - short)
    assert per_token <= 2, f"{per_token} host syncs per token at batch {batch}"
    assert few - short * per_token <= 4, f"{few - short * per_token} one-off syncs per prompt"


def test_stage_timer_synchronises_the_device_before_each_clock_read(monkeypatch):
    """On an accelerator the engine's stage times wait for the queued work (no GPU needed to check)."""
    from laser.method.engine import StageTimer

    waits = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waits.append(device))
    timer = StageTimer("cuda:0")
    with timer.stage("decode"):
        assert len(waits) == 1
    assert waits == [torch.device("cuda:0")] * 2 and timer.seconds["decode"] >= 0
    StageTimer("cpu").now()
    assert len(waits) == 2
