"""Each metric against the official rule of its benchmark, re-implemented here from the rule's definition
(the published evaluation scripts: EvalAI/TextVQA, DocVQA ANLS, A-OKVQA, GQA + LLaVA, POPE + LLaVA,
lmms-eval's POPE), on hand-made tricky cases; and `laser evaluate` on a POPE run (docs/metrics.md)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from run_fixtures import run_inprocess

from laser.records.metrics import (
    DEFAULT_METRICS,
    METRICS,
    anls,
    aokvqa_direct_accuracy,
    gqa_accuracy,
    normalize_answer,
    pope_answer,
    pope_metrics,
    score,
    vqa_soft_accuracy,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ EvalAI answer processing
# The contraction entries the cases below exercise, as the official table lists them: one missing
# apostrophe is restored, two are not ("couldntve"); "Im"/"Ive" are listed capitalised and so never
# match the lowercased text; "somebody'd" is listed the wrong way round.
OFFICIAL_CONTRACTIONS = {
    "dont": "don't",
    "couldnt've": "couldn't've",
    "couldn'tve": "couldn't've",
    "hes": "he's",
    "somebody'd": "somebodyd",
    "yall'll": "y'all'll",
    "twas": "'twas",
}
SPACE_SENSITIVE_MARKS = ';/[]"{}()=+\\_-><@`!'  # "," and "?" are deleted before this step


def reference_processing(answer: str) -> str:
    """EvalAI's answer processing, step by step from its description."""
    text = answer.lower()
    text = "".join(ch for ch in text if ch not in ",?")
    text = text.replace("'s", " 's").strip()
    text = re.sub(r"[\n\t]", " ", text).strip()
    deleted = {m for m in SPACE_SENSITIVE_MARKS if m + " " in text or " " + m in text}
    text = "".join("" if ch in deleted else " " if ch in SPACE_SENSITIVE_MARKS else ch for ch in text)
    kept, removed = [], 0
    for i, ch in enumerate(text):
        follows_digit = i + 1 < len(text) and text[i + 1].isdigit()
        if ch == "." and not follows_digit and removed < 32:
            removed += 1
            continue
        kept.append(ch)
    words = "".join(kept).split()
    numbers = dict(
        zip(
            "none zero one two three four five six seven eight nine ten".split(),
            "0 0 1 2 3 4 5 6 7 8 9 10".split(),
        )
    )
    words = [numbers.get(w, w) for w in words]
    words = [OFFICIAL_CONTRACTIONS.get(w, w) for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


PROCESSING_CASES = {
    "Two dogs.": "2 dogs",
    "The Cat's toy": "cat 's toy",
    "It's": "it 's",
    "1,000-2,000": "1000 2000",  # commas go first, then "-" (touching no space) becomes a space
    "a - b": "b",  # "-" touches a space: deleted; "a" is an article
    "left-hand": "left hand",
    "red (dark)": "red dark",  # "(" touches a space (deleted), ")" does not (space)
    "(red)": "red",
    "3.5 m.": "3.5 m",
    "a.m.": "am",
    "1.5.2": "1.5.2",
    "10.": "10",
    "e.g. this": "eg this",
    "What?": "what",
    "Hello,World": "helloworld",
    "yes !": "yes",
    "yes!!": "yes",
    "@home": "home",
    "none of the above": "0 of above",
    "Ten\tapples": "10 apples",
    "Dont": "don't",
    "couldnt've": "couldn't've",
    "couldn'tve": "couldn't've",
    "couldntve": "couldntve",
    "Im": "im",
    "shes": "shes",
    "hes": "he's",
    "somebody'd": "somebodyd",
    "yall'll": "y'all'll",
    "twas": "'twas",
    "well": "well",
    "." * 40 + "a": "." * 8 + "a",  # at most 32 periods are deleted
    "": "",
    "the": "",
}


@pytest.mark.parametrize(("raw", "expected"), list(PROCESSING_CASES.items()))
def test_answer_processing_matches_evalai(raw: str, expected: str) -> None:
    assert reference_processing(raw) == expected
    assert normalize_answer(raw) == expected


# ------------------------------------------------------------------ TextVQA / VQA soft accuracy
def reference_vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Mean over the ten subsets that leave one answer out of min(1, matches in the subset / 3)."""
    predicted = reference_processing(prediction)
    processed = [reference_processing(a) for a in answers]
    subsets = [processed[:i] + processed[i + 1 :] for i in range(len(processed))]
    return sum(min(1.0, subset.count(predicted) / 3) for subset in subsets) / len(subsets)


VQA_CASES = [
    ("Two", ["2", "2", "two.", "3", "3", "3", "3", "3", "3", "3"]),  # 3 matches after processing: 0.9
    ("the coca-cola", ["coca cola"] * 4 + ["coke"] * 6),  # 4 matches: 1.0
    ("1,000", ["1000", "1,000", "100"] + ["10"] * 7),  # 2 matches: 0.6
    ("dont know", ["don't know"] * 3 + ["no"] * 7),
    ("", ["the", "an", "a"] + ["x"] * 7),  # articles alone process to "" and match an empty answer
    ("Cat's", ["cat 's", "cats", "cat's"] + ["dog"] * 7),
    ("blue", ["green"] * 10),
    ("yes", ["yes"] * 10),
]


@pytest.mark.parametrize(("prediction", "answers"), VQA_CASES)
def test_vqa_soft_accuracy_matches_official(prediction: str, answers: list[str]) -> None:
    assert vqa_soft_accuracy(prediction, answers) == pytest.approx(
        reference_vqa_accuracy(prediction, answers)
    )


def test_vqa_soft_accuracy_hand_values() -> None:
    values = [vqa_soft_accuracy(p, a) for p, a in VQA_CASES]
    assert values == pytest.approx([0.9, 1.0, 0.6, 0.9, 0.9, 0.6, 0.0, 1.0])


# ------------------------------------------------------------------ DocVQA ANLS
@cache
def reference_edit_distance(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(
        reference_edit_distance(a[1:], b) + 1,
        reference_edit_distance(a, b[1:]) + 1,
        reference_edit_distance(a[1:], b[1:]) + (a[0] != b[0]),
    )


def reference_anls(prediction: str, answers: list[str]) -> float:
    """1 - min normalised distance (compared lowercased and whitespace-collapsed, divided by the longer
    string as given); 0 when that similarity is below 0.5."""
    collapse = lambda s: " ".join(s.strip().lower().split())  # noqa: E731
    distances = []
    for answer in answers:
        longest = max(len(answer.upper()), len(prediction.upper()))
        distance = reference_edit_distance(collapse(answer), collapse(prediction))
        distances.append(distance / longest if longest else 0.0)
    similarity = 1 - min(distances)
    return 0.0 if similarity < 0.5 else similarity


ANLS_CASES = [
    ("helo", ["hello"], 0.8),
    ("ab", ["ac"], 0.5),  # exactly at the threshold: kept
    ("abc", ["axy"], 0.0),
    (" Hello   WORLD ", ["hello world"], 1.0),
    ("hello  world", ["hello world x"], 1 - 2 / 13),  # divided by the raw 13 characters
    ("  ab  ", ["ac"], 1 - 1 / 6),  # padding counts in the length, not in the distance
    ("$1,000", ["1000", "$1,000.0"], 0.75),  # the closer reference wins
    ("", [""], 1.0),
    ("", ["x"], 0.0),
    ("Total: 12", ["12", "total 12"], 1 - 1 / 9),  # 1 edit over the 9 characters of the prediction
]


@pytest.mark.parametrize(("prediction", "answers", "expected"), ANLS_CASES)
def test_anls_matches_official(prediction: str, answers: list[str], expected: float) -> None:
    assert reference_anls(prediction, answers) == pytest.approx(expected)
    assert anls(prediction, answers) == pytest.approx(expected)


# ------------------------------------------------------------------ A-OKVQA
CHOICES = ["red", "dark red", "blue", "B"]  # an option whose text is also a letter


def test_aokvqa_multiple_choice_matches_official_on_option_texts() -> None:
    # Official: a prediction (one of the choices) is right when it equals choices[correct_choice_idx].
    cases = [("dark red", 1), ("red", 1), ("B", 1), ("B", 3), ("blue", 2), ("Blue", 2)]
    records = [{"prediction": p, "answers": ["ABCD"[c]], "choices": CHOICES} for p, c in cases]
    official = [float(p == CHOICES[c]) for p, c in cases]
    # "Blue" is no valid choice for the official script; ours reads it as option C (docs/metrics.md)
    assert official == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    ours = [score([record], "choice", n_boot=1)["accuracy"] for record in records]
    assert ours[:5] == official[:5]  # "B" is the option text "B" (D), not the letter B
    assert ours[5] == 1.0


def reference_aokvqa_direct(prediction: str, direct_answers: list[str]) -> float:
    return min(1.0, sum(prediction == answer for answer in direct_answers) / 3.0)


def test_aokvqa_direct_answer_matches_official() -> None:
    answers = ["fish", "fish", "fish", "fish", "salmon", "salmon", "trout", "fish", "food", "sushi"]
    for prediction in ("fish", "salmon", "trout", "bird"):  # clean answers, as the official script expects
        expected = reference_aokvqa_direct(prediction, answers)
        assert aokvqa_direct_accuracy(prediction, answers) == pytest.approx(expected)
    assert (
        aokvqa_direct_accuracy("fish", answers) == 1.0
    )  # 5 matches: no leave-one-out (VQA would give 1.0 too)
    assert aokvqa_direct_accuracy("salmon", answers) == pytest.approx(2 / 3)  # VQA's leave-one-out: 0.6
    assert vqa_soft_accuracy("salmon", answers) == pytest.approx(0.6)
    assert aokvqa_direct_accuracy("Salmon.", answers) == pytest.approx(2 / 3)  # known difference: processed
    records = [
        {"prediction": "fish", "answers": answers, "meta": {"difficult_direct_answer": False}},
        {"prediction": "trout", "answers": answers, "meta": {"difficult_direct_answer": False}},
        {"prediction": "fish", "answers": answers, "meta": {"difficult_direct_answer": True}},  # not scored
    ]
    result = score(records, "aokvqa_da", n_boot=10)
    assert result["n"] == 2 and result["excluded"] == 1
    assert result["accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)


# ------------------------------------------------------------------ GQA
def reference_gqa(prediction: str, gold: str) -> float:
    """LLaVA's conversion (rstrip('.').lower() of the stripped answer), then GQA's predicted == gold."""
    return float(prediction.strip().rstrip(".").lower() == gold)


GQA_CASES = [
    ("Yes.", "yes"),
    ("Left", "left"),
    ("The table", "table"),  # articles are not removed
    ("table...", "table"),
    ("t-shirt", "t-shirt"),
    ("T shirt", "t-shirt"),
    ("no,", "no"),
    ("two", "2"),  # number words are not converted
]


def test_gqa_matches_official() -> None:
    expected = [reference_gqa(p, g) for p, g in GQA_CASES]
    assert expected == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert [gqa_accuracy(p, [g]) for p, g in GQA_CASES] == expected
    records = [{"prediction": p, "answers": [g], "meta": {"isBalanced": True}} for p, g in GQA_CASES]
    records.append({"prediction": "yes", "answers": ["yes"], "meta": {"isBalanced": False}})  # not scored
    result = score(records, "gqa", n_boot=10)
    assert result["n"] == len(GQA_CASES) and result["excluded"] == 1
    assert result["accuracy"] == pytest.approx(sum(expected) / len(expected))
    assert DEFAULT_METRICS["gqa"] == "gqa"


# ------------------------------------------------------------------ V*
def test_vstar_accuracy_is_the_mean_over_all_questions() -> None:
    # V*'s script averages correctness over every question of both subsets (and prints each subset's
    # mean); the option itself is chosen differently there (likelihood ranking, docs/metrics.md).
    records = [
        {
            "prediction": "A",
            "answers": ["A"],
            "choices": ["x", "y"],
            "meta": {"category": "direct_attributes"},
        },
        {
            "prediction": "B",
            "answers": ["A"],
            "choices": ["x", "y"],
            "meta": {"category": "direct_attributes"},
        },
        {
            "prediction": "(B)",
            "answers": ["B"],
            "choices": ["x", "y"],
            "meta": {"category": "direct_attributes"},
        },
        {
            "prediction": "y",
            "answers": ["B"],
            "choices": ["x", "y"],
            "meta": {"category": "relative_position"},
        },
    ]
    assert score(records, "choice", n_boot=10)["accuracy"] == pytest.approx(3 / 4)  # not (2/3 + 1) / 2
    assert score(records[:3], "choice", n_boot=10)["accuracy"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------ POPE
def reference_pope(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """The POPE paper's evaluate.py (and LLaVA's eval_pope.py): keep the first sentence, drop commas,
    split at spaces; "No", "no" or "not" among the words -> no, else yes. Positive class: yes."""
    said_yes = []
    for text in predictions:
        sentence = text.split(".")[0] if "." in text else text
        words = sentence.replace(",", "").split(" ")
        said_yes.append(not any(w in ("No", "no", "not") for w in words))
    truth = [label == "yes" for label in labels]
    tp = sum(s and t for s, t in zip(said_yes, truth))
    fp = sum(s and not t for s, t in zip(said_yes, truth))
    tn = sum(not s and not t for s, t in zip(said_yes, truth))
    fn = sum(not s and t for s, t in zip(said_yes, truth))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "yes_ratio": sum(said_yes) / len(said_yes),
    }


def reference_pope_exact(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """lmms-eval's POPE: the answer lowercased and stripped must be the label; precision counts
    answers exactly "yes", recall the yes-labelled questions answered exactly "yes" or "no"."""
    answers = [p.lower().strip() for p in predictions]
    pairs = list(zip(answers, labels))
    tp = pairs.count(("yes", "yes"))
    fp = pairs.count(("yes", "no"))
    fn = pairs.count(("no", "yes"))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "accuracy": sum(a == t for a, t in pairs) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
    }


# (prediction, label): official class, lmms-eval class
POPE_CASES = [
    ("yes", "yes"),  # yes, yes
    ("no", "no"),  # no, no
    ("Yes, there is", "no"),  # yes, other
    ("No.", "no"),  # no, other
    ("There is no dog", "yes"),  # no, other
    ("not sure", "yes"),  # no, other
    ("1", "no"),  # yes, other
    ("", "yes"),  # yes, other
    ("NO", "no"),  # yes ("NO" is not among the words), no
    ("Not really.", "yes"),  # yes ("Not" is not among the words), other
    ("I don't think so", "no"),  # yes, other
    ("no", "yes"),  # no, no
    ("yes", "no"),  # yes, yes
]
POPE_PREDICTIONS = [p for p, _ in POPE_CASES]
POPE_LABELS = [label for _, label in POPE_CASES]
# official: TP 3 (yes, "", Not really.), FP 5 (Yes there is, 1, NO, I don't think so, yes), TN 2 (no, No.),
# FN 3 (There is no dog, not sure, no); other = answers not beginning with yes/no = 6
POPE_OFFICIAL = {
    "accuracy": 5 / 13,
    "precision": 3 / 8,
    "recall": 3 / 6,
    "f1": 3 / 7,
    "yes_ratio": 8 / 13,
    "other": 6,
    "tp": 3,
    "fp": 5,
    "tn": 2,
    "fn": 3,
}
# lmms-eval: TP 1, FP 1, TN 2 (no, NO), FN 1; 8 answers are neither "yes" nor "no"
POPE_EXACT = {
    "accuracy": 3 / 13,
    "precision": 1 / 2,
    "recall": 1 / 2,
    "f1": 1 / 2,
    "yes_ratio": 2 / 13,
    "other": 8,
    "tp": 1,
    "fp": 1,
    "tn": 2,
    "fn": 1,
}


def test_pope_classification_cases() -> None:
    official = [pope_answer(p) for p in POPE_PREDICTIONS]
    exact = [pope_answer(p, "exact") for p in POPE_PREDICTIONS]
    assert official == ["yes", "no", "yes", "no", "no", "no", "yes", "yes", "yes", "yes", "yes", "no", "yes"]
    assert exact == ["yes", "no"] + ["other"] * 6 + ["no", "other", "other", "no", "yes"]
    with pytest.raises(ValueError, match="POPE convention 'loose'"):
        pope_answer("yes", "loose")


def test_pope_metrics_match_both_official_scripts() -> None:
    official = pope_metrics(POPE_PREDICTIONS, POPE_LABELS)
    assert {k: official[k] for k in POPE_OFFICIAL} == pytest.approx(POPE_OFFICIAL)
    reference = reference_pope(POPE_PREDICTIONS, POPE_LABELS)
    assert {k: official[k] for k in reference} == pytest.approx(reference)
    exact = pope_metrics(POPE_PREDICTIONS, POPE_LABELS, "exact")
    assert {k: exact[k] for k in POPE_EXACT} == pytest.approx(POPE_EXACT)
    reference = reference_pope_exact(POPE_PREDICTIONS, POPE_LABELS)
    assert {k: exact[k] for k in reference} == pytest.approx(reference)


def test_pope_failed_sample_is_wrong_in_one_classification() -> None:
    records = [
        {"prediction": None, "answers": ["yes"], "error": "OOM"},  # official: no (FN); exact: other
        {"prediction": None, "answers": ["no"], "error": "OOM"},  # official: yes (FP); exact: other
        {"prediction": "yes", "answers": ["yes"]},
        {"prediction": "", "answers": ["yes"]},  # an empty answer is an answer: official yes
    ]
    official = score(records, "pope", n_boot=10)
    assert (official["tp"], official["fp"], official["tn"], official["fn"]) == (2, 1, 0, 1)
    assert official["accuracy"] == pytest.approx(2 / 4) and official["errors"] == 2
    assert official["other"] == 1  # the empty answer; failed samples are counted in errors
    exact = score(records, "pope_exact", n_boot=10)
    assert (exact["tp"], exact["fp"], exact["tn"], exact["fn"], exact["other"]) == (1, 0, 0, 0, 1)
    assert exact["accuracy"] == pytest.approx(1 / 4)
    assert score([{"prediction": None, "answers": ["the"] * 10}], "vqa", n_boot=1)["accuracy"] == 0.0


def _pope_run(folder: Path, metric: str | None = None) -> Path:
    annotations = folder / "coco_pope_adversarial.json"
    annotations.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": i + 1,
                    "image": f"COCO_val2014_{i:012d}.jpg",
                    "text": "Is there a dog?",
                    "label": label,
                }
            )
            + "\n"
            for i, label in enumerate(POPE_LABELS)
        )
    )
    run = folder / "run"
    run.mkdir()
    data = {"format": "pope", "annotations": str(annotations), **({"metric": metric} if metric else {})}
    (run / "run_config.json").write_text(json.dumps({"data": data, "method": {"name": "vanilla"}}))
    records = [
        {
            "sample_id": str(i + 1),
            "question": "Is there a dog?",
            "answers": [label],
            "prediction": prediction,
            "error": None,
        }
        for i, (prediction, label) in enumerate(POPE_CASES)
    ]
    (run / "predictions.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_laser_evaluate_pope_gives_the_official_numbers_and_lmms_eval_by_name(tmp_path: Path) -> None:
    run = _pope_run(tmp_path)
    code, stdout, _ = run_inprocess("evaluate", str(run))
    assert code == 0 and "official convention" in stdout and "F1 42.9" in stdout
    overall = json.loads((run / "metrics.json").read_text())["overall"]
    assert overall["metric"] == "pope" and overall["n"] == 13 and overall["convention"] == "official"
    assert {k: overall[k] for k in POPE_OFFICIAL} == pytest.approx(POPE_OFFICIAL)

    code, stdout, _ = run_inprocess("evaluate", str(run), "--metric", "pope_exact")
    assert code == 0 and "exact convention" in stdout
    overall = json.loads((run / "metrics.json").read_text())["overall"]
    assert overall["metric"] == "pope_exact" and overall["convention"] == "exact"
    assert {k: overall[k] for k in POPE_EXACT} == pytest.approx(POPE_EXACT)


def test_run_config_metric_selects_the_lmms_eval_convention(tmp_path: Path) -> None:
    run = _pope_run(tmp_path, metric="pope_exact")
    code, _, _ = run_inprocess("evaluate", str(run))
    overall = json.loads((run / "metrics.json").read_text())["overall"]
    assert code == 0 and overall["metric"] == "pope_exact"
    assert overall["accuracy"] == pytest.approx(POPE_EXACT["accuracy"])


# ------------------------------------------------------------------ docs/metrics.md
def test_the_metrics_page_lists_every_metric_with_its_official_script() -> None:
    page = (ROOT / "docs" / "metrics.md").read_text()
    table = page.split("| metric | official script it matches | known differences |")[1].split("\n\n")[0]
    rows = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)` ", table, re.M)}
    assert rows == set(METRICS)
