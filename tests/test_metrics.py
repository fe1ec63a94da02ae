"""Metrics against hand-computed expectations."""

from __future__ import annotations

import pytest

from laser.records.metrics import (
    DEFAULT_METRICS,
    anls,
    bootstrap_ci,
    choice_accuracy,
    exact_match,
    extract_choice,
    levenshtein,
    normalize_answer,
    pope_metrics,
    score,
    vqa_soft_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),
        ("  The Cat\n", "cat"),
        ("an apple", "apple"),
        ("none", "0"),
        ("Yes, it is!", "yes it is"),  # punctuation touching a space is deleted
        ("left-hand", "left hand"),  # punctuation inside a word becomes a space
        ("1,000", "1000"),  # commas are deleted
        ("3.5", "3.5"),  # a decimal point stays
        ("end.", "end"),
        ("dont", "don't"),
        ("couldnt've", "couldn't've"),
        ("couldntve", "couldntve"),  # the official table restores one missing apostrophe, not two
        ("its", "its"),  # an ordinary word, not "it's"
        ("cat's", "cat 's"),  # "'s" is split off
        ("(red)", "red"),
        ("a\tb", "b"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_soft_accuracy_leave_one_out_over_ten(matches: int, expected: float) -> None:
    # k matches of 10: k subsets drop a match -> min(1,(k-1)/3); 10-k keep all -> min(1,k/3)
    answers = ["2"] * matches + ["other"] * (10 - matches)
    assert vqa_soft_accuracy("Two.", answers) == pytest.approx(expected)


def test_vqa_soft_accuracy_with_fewer_than_ten_answers() -> None:
    assert vqa_soft_accuracy("cat", ["cat", "dog", "bird"]) == pytest.approx(1 / 3)
    assert vqa_soft_accuracy("cat", ["cat", "Cat.", "dog"]) == pytest.approx(2 / 3)
    assert vqa_soft_accuracy("cat", ["cat"] * 4) == 1.0
    with pytest.raises(ValueError, match="at least one reference answer"):
        vqa_soft_accuracy("cat", [])


def test_exact_match() -> None:
    assert exact_match("The Eiffel Tower.", ["eiffel tower", "tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert exact_match("anything", []) == 0.0


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_levenshtein(a: str, b: str, distance: int) -> None:
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_anls_hand_computed() -> None:
    assert anls("helo", ["hello"]) == pytest.approx(0.8)  # 1 edit / 5 characters
    assert anls(" Hello   WORLD ", ["hello world"]) == 1.0  # case and spacing do not count
    assert anls("ab", ["ac"]) == 0.5  # NL = 0.5: similarity 0.5 is not below the threshold
    assert anls("abc", ["axy"]) == 0.0  # NL = 2/3: no credit
    assert anls("abcd", ["abxd"]) == pytest.approx(0.75)
    assert anls("$1,000", ["1000", "$1,000.0"]) == pytest.approx(0.75)  # 2/6 vs 2/8: the closer reference wins
    assert anls("", ["x"]) == 0.0
    with pytest.raises(ValueError, match="at least one reference answer"):
        anls("x", [])


def test_docvqa_is_scored_with_anls() -> None:
    assert DEFAULT_METRICS["docvqa"] == "anls"
    result = score([{"prediction": "helo", "answers": ["hello"]}, {"prediction": "x", "answers": ["abc"]}], "anls")
    assert result["metric"] == "anls" and result["accuracy"] == pytest.approx(0.4)


def test_pope_metrics_hand_computed() -> None:
    predictions = ["Yes", "No, there is not.", "yes.", "I think so", "no"]
    labels = ["yes", "no", "no", "yes", "yes"]
    # official: yes/no/yes/yes (no "no" word)/no -> TP=2 (0, 3), FP=1 (2), TN=1 (1), FN=1 (4)
    result = pope_metrics(predictions, labels)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["yes_ratio"] == pytest.approx(3 / 5)
    assert result["other"] == 1 and result["n"] == 5


def test_pope_metrics_undefined_precision_is_zero_and_bad_input() -> None:
    result = pope_metrics(["no", "no"], ["yes", "no"])
    assert (result["precision"], result["recall"], result["f1"], result["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="POPE label 'maybe'"):
        pope_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])


CHOICES = ["red", "dark red", "blue", "green"]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("C. blue", "C"),
        ("(D) green", "D"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("Answer: (A)", "A"),
        ("I choose D because it is green.", "D"),
        ("It must be (C), the blue one", "C"),
        ("Blue.", "C"),  # option text
        ("dark red", "B"),  # mentions "red" too, but "dark red" contains it
        ("It is red.", "A"),
        ("E", None),  # only 4 options
        ("", None),
        (None, None),
        ("I cannot tell", None),
        ("red or blue", None),  # two options: ambiguous
    ],
)
def test_extract_choice(prediction: str | None, expected: str | None) -> None:
    assert extract_choice(prediction, 4, CHOICES) == expected


def test_extract_choice_without_option_texts_and_bad_n() -> None:
    assert extract_choice("blue", 4) is None
    assert extract_choice("The answer is C", 2) is None  # C is not among A-B
    with pytest.raises(ValueError, match="n_choices=0"):
        extract_choice("A", 0)


def test_choice_accuracy_counts_unparsed() -> None:
    result = choice_accuracy(
        ["B", "(A)", "blue", "no idea"],
        ["B", "B", "C", "A"],
        [4, 4, ["red", "green", "blue"], 2],
    )
    assert result == {"accuracy": 0.5, "unparsed": 1, "n": 4}


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.7] * 20) == (pytest.approx(0.7), pytest.approx(0.7))
    low, high = bootstrap_ci([0.0, 1.0] * 50, n=2000, seed=1)
    # mean 0.5, standard error sqrt(0.25/100) = 0.05 -> about 0.5 +- 0.098
    assert 0.38 < low < 0.45 and 0.55 < high < 0.62
    assert bootstrap_ci([0.0, 1.0] * 50, seed=3) == bootstrap_ci([0.0, 1.0] * 50, seed=3)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_score_vqa_with_errors_and_unscored() -> None:
    records = [
        {"sample_id": "1", "prediction": "two", "answers": ["2"] * 2 + ["x"] * 8, "error": None},  # 0.6
        {"sample_id": "2", "prediction": None, "answers": ["2"] * 10, "error": "cannot load image"},  # 0.0
        {"sample_id": "3", "prediction": "2", "answers": [], "error": None},  # test split: unscored
    ]
    result = score(records, "vqa", n_boot=200)
    assert (
        result["metric"] == "vqa" and result["n"] == 2 and result["unscored"] == 1 and result["errors"] == 1
    )
    assert result["accuracy"] == pytest.approx(0.3)
    low, high = result["ci95"]
    assert 0.0 <= low <= 0.3 <= high <= 0.6


def test_score_pope_exact_and_choice() -> None:
    pope = score(
        [
            {"prediction": "Yes", "answers": ["yes"]},
            {"prediction": "yes", "answers": ["no"]},
            {"prediction": "No", "answers": ["no"]},
        ],
        "pope",
    )
    assert pope["accuracy"] == pytest.approx(2 / 3) and pope["precision"] == pytest.approx(0.5)
    assert pope["recall"] == 1.0 and pope["yes_ratio"] == pytest.approx(2 / 3)
    exact = score(
        [{"prediction": "The dog", "answers": ["dog"]}, {"prediction": "cat", "answers": ["dog"]}], "exact"
    )
    assert exact["accuracy"] == 0.5
    question = "Which?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    choice = score(
        [
            {"prediction": "blue", "answers": ["B"], "question": question},  # options read from the question
            {"prediction": "A", "answers": ["A"], "choices": ["x", "y"]},
            {"prediction": "hmm", "answers": ["A"], "choices": ["x", "y"]},
        ],
        "choice",
    )
    assert choice["accuracy"] == pytest.approx(2 / 3) and choice["unparsed"] == 1
    assert score([], "exact")["accuracy"] is None
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score([], "bleu")
