"""Errors are classified: out of memory and device faults are written `"retryable": true` (the device
cache emptied first, a batch retried sample by sample) and a rerun answers them again; input errors
(a broken image) stay done. Plus the classifier itself."""

import json

import pytest
import torch
from run_fixtures import predict_args, run_inprocess, save_tiny_llava, write_dataset

import laser.run.answering as answering
from laser.records.files import completed_ids, merge_records

OOM_QUESTION = "Is there a red box ?"  # sample s001 of `write_dataset`


@pytest.fixture
def oom_adapter(monkeypatch):
    """The LLaVA adapter raising a CUDA-style out-of-memory error for any batch holding sample s001
    while `state["oom"]` is set; counts the questions each call saw and the cache emptyings."""
    from laser.adapters.llava import LlavaAdapter

    state = {"oom": True, "questions": [], "freed": 0}
    real = LlavaAdapter.build_inputs

    def build_inputs(self, images, questions, *, with_question=True):
        state["questions"].extend(questions)
        if state["oom"] and OOM_QUESTION in questions:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total)")
        return real(self, images, questions, with_question=with_question)

    free = getattr(answering, "free_device_memory", None)

    def counted():
        state["freed"] += 1
        if free is not None:
            free()

    monkeypatch.setattr(LlavaAdapter, "build_inputs", build_inputs)
    monkeypatch.setattr(answering, "free_device_memory", counted, raising=False)
    return state


def test_out_of_memory_is_retried_on_rerun_and_input_errors_are_not(tmp_path, oom_adapter):
    model = save_tiny_llava(tmp_path / "model", image_size=112)
    annotations = write_dataset(tmp_path / "data", n=4)
    (tmp_path / "data" / "images" / "img3.png").write_bytes(b"not a png")  # s003: an input error
    out = tmp_path / "run"
    args = predict_args(model, annotations, out, "method=vanilla", "data.batch_size=2")

    code, _, err = run_inprocess("predict", *args)
    assert code == 0, err
    first = [json.loads(line) for path in sorted(out.glob("predictions.rank*.jsonl")) for line in path.read_text().splitlines()]
    by_id = {r["sample_id"]: r for r in first}
    assert by_id["s000"]["error"] is None  # same batch as s001: answered alone after the batch failed
    assert "OutOfMemoryError" in by_id["s001"]["error"] and by_id["s001"]["retryable"] is True
    assert by_id["s003"]["error"] and by_id["s003"]["retryable"] is False
    assert by_id["s002"]["error"] is None
    assert oom_adapter["freed"] >= 2  # the batch's failure and s001's own
    assert completed_ids(out) == {"s000", "s002", "s003"}
    _, report = merge_records(out, [f"s{i:03d}" for i in range(4)])
    assert report["retryable"] == ["s001"] and report["missing"] == ["s001"]

    oom_adapter["oom"], oom_adapter["questions"] = False, []
    code, stdout, err = run_inprocess("predict", *args)  # the same command: resumes
    assert code == 0, err
    asked = set(oom_adapter["questions"])  # only s001 ran again (s000, s002 are done; s003's image is broken)
    assert OOM_QUESTION in asked and not asked & {"What is the color ?", "What digit is in the blue box ?", "How many"}
    records, report = merge_records(out, [f"s{i:03d}" for i in range(4)])
    answered = {r["sample_id"]: r for r in records}
    assert answered["s001"]["error"] is None and answered["s001"]["prediction"] is not None
    assert answered["s003"]["retryable"] is False
    assert report["missing"] == [] and report["retryable"] == [] and report["errors"] == 1
    assert "4/4 samples" in stdout


@pytest.mark.parametrize(
    "error, retryable",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
        (MemoryError(), True),
        (ValueError("questions[0] is empty"), False),
        (ValueError("questions[0]: prompt of 5000 tokens + decode.max_new_tokens=16 exceeds ..."), False),
        (OSError("cannot identify image file 'x.png'"), False),
        (RuntimeError("Expected all tensors to be on the same device"), False),
    ],
)
def test_resource_and_device_errors_are_retryable(error, retryable):
    assert answering.is_retryable(error) is retryable
