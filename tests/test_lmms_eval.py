"""LASER run from lmms-eval's own command line (`lmms-eval --model laser`, laser/integrations/lmms_eval.py)
on a local task over a slice of the testbed split (tests/lmms_task/): the answers equal `laser predict`
on the same questions at batch size 4 under torchrun with 2 CPU processes and at batch size 1; a run
killed with `output_dir=` resumes, answering only what was missing; the answer instruction appears
once in the prompt the model sees.

Needs the `lmms` extra. Without it this module is skipped, unless LASER_REQUIRE_LMMS is set (as CI
does), which turns the missing package into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import lmms_eval  # noqa: F401
except ModuleNotFoundError:
    if os.environ.get("LASER_REQUIRE_LMMS"):
        raise
    pytest.skip(
        "lmms-eval is not installed (pip install -e '.[lmms]'); LASER_REQUIRE_LMMS=1 makes this a failure",
        allow_module_level=True,
    )

from laser.adapters import DEFAULT_INSTRUCTION  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_task.utils import SLICE  # noqa: E402
from PIL import Image  # noqa: E402
from run_fixtures import run_inprocess  # noqa: E402

from laser.integrations.lmms_eval import LaserLMM, apply_until, decode_settings, strip_instruction  # noqa: E402
from laser.paths import assets_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = "laser_testbed"
N_DOCS = len(SLICE)
TESTBED = assets_dir() / "testbed"


# ------------------------------------------------------------------ the real command line
def lmms_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lmms-eval")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lmms_eval"]


def lmms_args(output_dir: Path, log_dir: Path, batch_size: int) -> list[str]:
    return [
        "--model", "laser",
        "--model_args", f"pretrained=testbed,method=laser,output_dir={output_dir}",
        "--include_path", str(ROOT / "tests" / "lmms_task"),
        "--tasks", TASK,
        "--batch_size", str(batch_size),
        "--output_path", str(log_dir),
        "--log_samples",
    ]  # fmt: skip


def lmms_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HOME": str(home),  # the datasets cache of the task's JSON
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    # the task reads laser/assets/testbed/eval.jsonl relative to the repository root
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def logged_results(log_dir: Path) -> tuple[dict[int, str], float]:
    """(lmms-eval's response per doc id, its exact_match) from `--output_path ... --log_samples`."""
    (samples,) = log_dir.rglob(f"*_samples_{TASK}.jsonl")
    (results,) = log_dir.rglob("*_results.json")
    responses = {}
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        responses[sample["doc_id"]] = sample["filtered_resps"]
    score = json.loads(results.read_text())["results"][TASK]["exact_match,none"]
    return responses, score


def lines_of(output_dir: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(output_dir.glob("predictions.rank*.jsonl")) for line in p.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comparable(record: dict) -> tuple:
    return (record["prediction"], record["layer"], record["box"], record["path"], record["error"])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lmms")


@pytest.fixture(scope="module")
def reference(home) -> dict[str, dict]:
    """`laser predict` records of the task's documents, their ids being the lmms-eval model's
    `<task>/<split>/<doc_id>` (which is what each sample's seed is made from)."""
    lines = (TESTBED / "eval.jsonl").read_text().splitlines()
    annotations = home / "slice.jsonl"
    with annotations.open("w") as out:
        for doc_id, line in enumerate(lines[i] for i in SLICE):
            out.write(json.dumps({**json.loads(line), "sample_id": f"{TASK}/test/{doc_id}"}) + "\n")
    output = home / "predict"
    code, _, err = run_inprocess(
        "predict", "model=testbed", "method=laser", "data=jsonl", f"data.annotations={annotations}",
        f"data.image_root={TESTBED}", "data.batch_size=8", f"output_dir={output}",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    )  # fmt: skip
    assert code == 0, err
    records = {r["sample_id"]: r for r in lines_of(output)}
    assert len(records) == N_DOCS and all(r["error"] is None for r in records.values())
    return records


@pytest.fixture(scope="module")
def two_processes(home):
    """`torchrun --nproc_per_node 2 -m lmms_eval --model laser ... --batch_size 4`: an uninterrupted run."""
    output, logs = home / "torchrun", home / "torchrun_logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "lmms_eval", *lmms_args(output, logs, batch_size=4),
    ]  # fmt: skip
    run(command, lmms_env(home / "hf"))
    return output, logged_results(logs)


def test_two_processes_at_batch_4_answer_like_laser_predict(reference, two_processes):
    output, (responses, _) = two_processes
    assert responses == {i: reference[f"{TASK}/test/{i}"]["prediction"] for i in range(N_DOCS)}
    per_rank = [len(p.read_text().splitlines()) for p in sorted(output.glob("predictions.rank*.jsonl"))]
    assert per_rank == [N_DOCS // 2, N_DOCS // 2]  # each process answered its own half, once
    records = {r["sample_id"]: r for r in lines_of(output)}
    assert sorted(records) == sorted(reference)
    for sample_id, expected in reference.items():
        assert comparable(records[sample_id]) == comparable(expected), sample_id
        assert records[sample_id]["vaq"] == pytest.approx(expected["vaq"], rel=1e-4, abs=1e-6)  # float rounding
        assert records[sample_id]["question"] == expected["question"]  # the task's instruction was removed


KILLED_AFTER = 2
"""The killed run dies right after its 2nd answer is fsynced, of N_DOCS (8) at batch size 1."""

KILL_AFTER_APPEND = """
import sys
from laser.run import writer

real, appends = writer.RecordFile.append, 0

def append(self, records):  # the test-only kill point of `laser predict` (writer.KILL_AFTER_BATCH_ENV),
    global appends          # after each batch the lmms-eval model appends to its predictions file
    real(self, records)
    if records:
        appends += 1
        writer._test_kill_point(appends)

writer.RecordFile.append = append
from lmms_eval.cli.dispatch import main  # what the lmms-eval command runs
sys.argv[0] = "lmms-eval"
sys.exit(main())
"""


def test_killed_run_resumes_and_ends_like_an_uninterrupted_run(reference, two_processes, home):
    from laser.run.writer import KILL_AFTER_BATCH_ENV

    output, logs = home / "killed", home / "killed_logs"
    command = lmms_eval_command() + lmms_args(output, logs, batch_size=1)
    env = lmms_env(home / "hf")
    records = output / "predictions.rank0.jsonl"
    stderr = home / "killed_stderr.txt"  # a file, not a pipe: nothing waits on what the killed process held
    with stderr.open("w") as err:
        code = subprocess.run(
            [sys.executable, "-c", KILL_AFTER_APPEND, *lmms_args(output, logs, batch_size=1)], cwd=ROOT,
            env={**env, KILL_AFTER_BATCH_ENV: str(KILLED_AFTER)}, stdout=subprocess.DEVNULL, stderr=err, timeout=400,
        ).returncode  # fmt: skip
    assert code == -signal.SIGKILL, stderr.read_text()[-3000:]
    before = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(before) == KILLED_AFTER  # killed at exactly that point, every answer before it kept whole
    assert not list(logs.rglob("*_results.json"))  # lmms-eval itself saved nothing

    resumed = run(command, env)
    assert f"{KILLED_AFTER} of {N_DOCS} documents already answered" in resumed.stdout  # lmms-eval logs to stdout
    assert f"answering {N_DOCS - KILLED_AFTER}" in resumed.stdout
    after = lines_of(output)
    assert after[:KILLED_AFTER] == before  # kept, and only the missing documents were answered
    assert len(after) == N_DOCS and len({r["sample_id"] for r in after}) == N_DOCS
    responses, score = logged_results(logs)
    uninterrupted_responses, uninterrupted_score = two_processes[1]
    assert responses == uninterrupted_responses and score == uninterrupted_score
    assert responses == {i: reference[f"{TASK}/test/{i}"]["prediction"] for i in range(N_DOCS)}  # batch size 1


# ------------------------------------------------------------------ the model in this process
@pytest.fixture(scope="module")
def lmm() -> LaserLMM:
    return LaserLMM(pretrained="testbed", method="laser", batch_size=4)


def slice_docs(n: int) -> list[dict]:
    lines = (TESTBED / "eval.jsonl").read_text().splitlines()
    return [json.loads(lines[i]) for i in list(SLICE)[:n]]


def one_image(doc: dict) -> list[Image.Image]:
    return [Image.open(TESTBED / doc["image"]).convert("RGB")]


def requests_for(lmm: LaserLMM, docs: list[dict], doc_to_visual=one_image, gen_kwargs=None, suffix=None) -> list:
    """lmms-eval `generate_until` requests over `docs` (task "t", split "test"), prompted like its
    TextVQA/POPE tasks (question + "\\nAnswer the question using a single word or phrase.")."""
    suffix = f"\n{DEFAULT_INSTRUCTION}" if suffix is None else suffix
    lmm.task_dict = {"t": {"test": docs}}
    return [
        Instance(
            "generate_until",
            (doc["question"] + suffix, dict(gen_kwargs or {"until": ["ASSISTANT:"]}), doc_to_visual, i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


class PromptSpy:
    """The adapter's processor, recording every prompt text it is given."""

    def __init__(self, processor):
        self.processor, self.texts = processor, []

    def __call__(self, *args, **kwargs):
        self.texts += list(kwargs.get("text") or [])
        return self.processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def test_the_instruction_appears_once_in_the_prompt(lmm, monkeypatch):
    docs = slice_docs(2)
    spy = PromptSpy(lmm.engine.adapter.processor)
    monkeypatch.setattr(lmm.engine.adapter, "processor", spy)
    lmm.generate_until(requests_for(lmm, docs))
    assert spy.texts, "the processor was not called"
    for text in spy.texts:  # with and without the question (the VAQ passes), and the decode pass
        assert text.count(DEFAULT_INSTRUCTION) == 1, text
    for doc in docs:
        assert any(f"{doc['question']}\n{DEFAULT_INSTRUCTION}" in text for text in spy.texts)
    assert strip_instruction(f"Q?\n{DEFAULT_INSTRUCTION}", [DEFAULT_INSTRUCTION]) == "Q?"
    assert strip_instruction("Q? Answer:", [DEFAULT_INSTRUCTION]) == "Q? Answer:"  # other prompts kept


def test_multi_image_and_imageless_documents_fail_alone(lmm):
    docs = slice_docs(4)
    alone = lmm.generate_until(requests_for(lmm, docs))

    def visuals(doc):
        if doc is docs[1]:
            return one_image(doc) * 2
        return [] if doc is docs[2] else one_image(doc)

    answers = lmm.generate_until(requests_for(lmm, docs, doc_to_visual=visuals))
    assert answers[1] == answers[2] == ""
    assert [answers[0], answers[3]] == [alone[0], alone[3]] and alone[0] and alone[3]


def test_generation_settings_and_unsupported_requests(lmm):
    assert apply_until("red car\n\nmore", ["\n\n"]) == "red car"
    assert decode_settings({"until": ["x"], "max_new_tokens": 4, "temperature": 0, "num_beams": 1}, "t") == (
        {"max_new_tokens": 4, "do_sample": False},
        ("x",),
    )
    assert decode_settings({"temperature": 0.7, "top_p": 0.9}, "t")[0] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    with pytest.raises(ValueError, match="num_beams=3"):
        decode_settings({"num_beams": 3}, "t")
    # a task's max_new_tokens reaches the decoder, and its own group runs with it
    docs = slice_docs(2)
    full = lmm.generate_until(requests_for(lmm, docs))
    short = requests_for(lmm, docs, gen_kwargs={"until": [], "max_new_tokens": 1})
    mixed = lmm.generate_until([short[0], requests_for(lmm, docs)[1]])
    assert mixed[1] == full[1] and len(lmm.engine.adapter.tokenizer.encode(mixed[0], add_special_tokens=False)) <= 1
    assert lmm.engine.config.decode.max_new_tokens == 16  # restored after the call
    with pytest.raises(NotImplementedError, match="generate_until"):
        lmm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until"):
        lmm.generate_until_multi_round([])
    with pytest.raises(ValueError, match="unknown laser model arg 'bogus'"):
        LaserLMM(pretrained="testbed", bogus=1)
    with pytest.raises(ValueError, match="nonexistent"):
        LaserLMM(pretrained="testbed", **{"crop.nonexistent": 1})


def test_model_args_and_the_output_folder_guard(lmm, tmp_path):
    both = LaserLMM.create_from_arg_string("pretrained=testbed,batch_size=3,crop.ratio=0.4", {"batch_size": "1"})
    assert both.batch_size == 3 and both.method.crop.ratio == 0.4  # model_args win over --batch_size
    first = LaserLMM(pretrained="testbed", output_dir=str(tmp_path))
    first.generate_until(requests_for(first, slice_docs(1)))
    with pytest.raises(ValueError, match="method.name: 'laser' -> 'vanilla'"):
        LaserLMM(pretrained="testbed", method="vanilla", output_dir=str(tmp_path))
    again = LaserLMM(pretrained="testbed", method="vanilla", output_dir=str(tmp_path), overwrite=True)
    assert not list(tmp_path.glob("predictions.rank*.jsonl"))  # overwrite deleted the old answers
    assert again.generate_until(requests_for(again, slice_docs(1)))[0] == lines_of(tmp_path)[0]["prediction"]
