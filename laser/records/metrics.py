"""Benchmark metrics over prediction records, each computing what its benchmark's official evaluation does.

`score(records, metric)` is the entry point; the per-answer functions are exposed for tests and for
analyses that need per-sample values. The metrics (docs/metrics.md has the table of official
scripts and known differences):

- `vqa`: TextVQA/VQA soft accuracy, EvalAI answer processing (`normalize_answer`) and the average of
  min(1, matches/3) over the ten leave-one-out subsets of the references.
- `exact`: any reference equals the prediction after `normalize_answer`.
- `gqa`: GQA accuracy, exact string match with the prediction lowercased and stripped of trailing periods;
  questions marked `isBalanced: false` are left out.
- `anls`: DocVQA ANLS (1 - normalised edit distance to the closest reference, 0 below 0.5).
- `aokvqa_da`: A-OKVQA direct answer, min(1, matches/3) over the ten direct answers; questions marked
  `difficult_direct_answer` are left out.
- `choice`: multiple-choice accuracy (A-OKVQA MC, V*), the option read from the answer.
- `pope`: POPE accuracy/precision/recall/F1/yes-ratio with the POPE paper's classification (the
  first sentence holds "no", "No" or "not" -> no, anything else -> yes), as LLaVA's `eval_pope.py`.
- `pope_exact`: the same figures with lmms-eval's classification (the whole answer, lowercased, is
  exactly "yes" or "no"; anything else is wrong for both labels).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("vqa", "exact", "gqa", "anls", "aokvqa_da", "choice", "pope", "pope_exact")
DEFAULT_METRICS = {
    "jsonl": "exact",
    "textvqa": "vqa",
    "pope": "pope",
    "aokvqa": "choice",
    "vstar": "choice",
    "gqa": "gqa",
    "docvqa": "anls",
}
"""The metric each data format is scored with unless the config names one."""
CHOICE_LETTERS = string.ascii_uppercase  # as laser.data.samples; not imported, to keep metrics light

# ------------------------------------------------------------- normalisation
# EvalAI's answer processing (the VQA challenge's, used by TextVQA's evaluator and LLaVA's eval_textvqa).
# Marks handled one by one, in this order; the apostrophe is kept and the period handled apart.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point)
_MAX_PERIODS = 32  # the official script passes re.UNICODE (32) where re.sub takes its count
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})

# The contractions the processing restores, canonically spelled. A word typed with exactly one of the
# apostrophes left out maps back ("dont" -> "don't"; "couldnt've", "couldn'tve" -> "couldn't've"; but
# "couldntve" stays). Contractions the official table lacks (or lists capitalised, so that they never
# match the lowercased text: "im", "ive") are not here, and "shes", "well", "were", "its" stay as typed.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd
he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't
must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've
somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd
something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're
they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's
where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
_CONTRACTION_QUIRKS = {"somebody'd": "somebodyd"}  # the official table maps this one the wrong way round


def _contraction_table() -> dict[str, str]:
    """Each canonical contraction under every spelling that drops exactly one of its apostrophes."""
    table: dict[str, str] = {}
    for canonical in _CONTRACTIONS:
        for i, ch in enumerate(canonical):
            if ch == "'":
                table[canonical[:i] + canonical[i + 1 :]] = canonical
    return {**table, **_CONTRACTION_QUIRKS}


_CONTRACTION_TABLE = _contraction_table()


def normalize_answer(answer: str) -> str:
    """EvalAI's VQA answer processing, so "Two dogs." and "2 dogs" compare equal.

    In order: lowercase; delete commas and question marks and split "'s" off its word ("cat's" ->
    "cat 's"); newlines/tabs become spaces. Then each mark of `;/[]"{}()=+\\_-><@`,?!` is deleted
    everywhere when any of its occurrences touches a space, else replaced by a space everywhere
    ("left-hand" -> "left hand"); periods are deleted unless a digit follows ("3.5" stays; at most 32,
    as the official script). Finally the words: number words zero..ten (and "none") become digits,
    the articles a/an/the are dropped, and apostrophe-less contractions are restored ("dont" -> "don't").
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for mark in _PUNCTUATION:
        out = out.replace(mark, "" if f"{mark} " in text or f" {mark}" in text else " ")
    out = _PERIOD.sub("", out, count=_MAX_PERIODS)
    words = [_NUMBER_WORDS.get(word, word) for word in out.split()]
    return " ".join(_CONTRACTION_TABLE.get(word, word) for word in words if word not in _ARTICLES)


# ------------------------------------------------------------ open answers
def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official VQA accuracy: min(1, matches/3), averaged over the leave-one-out subsets.

    Prediction and references go through `normalize_answer`. With 10 (or more) references the score
    averages min(1, matches/3) over the subsets that leave out one reference each (the official
    protocol: one match gives 0.3, two 0.6, three 0.9, four or more 1.0). With fewer than 10 (the
    official evaluators require exactly 10) there is no annotator pool to average over and
    min(1, matches/3) is used directly (one match of three answers gives 1/3).
    """
    if not answers:
        raise ValueError("vqa_soft_accuracy needs at least one reference answer; got none")
    predicted = normalize_answer(prediction)
    hits = [normalize_answer(answer) == predicted for answer in answers]
    matches = sum(hits)
    if len(answers) < 10:
        return min(1.0, matches / 3)
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(hits)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == predicted for answer in answers))


def gqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """GQA's accuracy of one answer: the prediction, stripped, without trailing periods and lowercased
    (how LLaVA's `convert_gqa_for_eval.py` prepares it), equals the reference exactly (GQA's `eval.py`)."""
    predicted = prediction.strip().rstrip(".").lower()
    return float(any(predicted == answer for answer in answers))


def aokvqa_direct_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """A-OKVQA direct-answer accuracy: min(1, matches/3) over the (ten) direct answers, without the
    leave-one-out average of VQA; prediction and answers compared after `normalize_answer`."""
    if not answers:
        raise ValueError("aokvqa_direct_accuracy needs at least one reference answer; got none")
    predicted = normalize_answer(prediction)
    return min(1.0, sum(normalize_answer(answer) == predicted for answer in answers) / 3)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


ANLS_THRESHOLD = 0.5


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """Average Normalized Levenshtein Similarity of one answer, as DocVQA's official evaluation.

    Strings are compared lowercased with whitespace collapsed (not VQA-normalised: DocVQA answers
    are extracted text); the distance is divided by the longer of the two strings as given (before
    collapsing, as the official script). The sample's value is 1 - the smallest normalised distance
    over its references, or 0 when that is below `threshold` (a distance of exactly 0.5 still scores 0.5).
    """
    if not answers:
        raise ValueError("anls needs at least one reference answer; got none")
    predicted = " ".join(prediction.lower().split())
    distances = []
    for answer in answers:
        answer = str(answer)
        longest = max(len(answer.upper()), len(prediction.upper()))
        reference = " ".join(answer.lower().split())
        distances.append(levenshtein(predicted, reference) / longest if longest else 0.0)
    similarity = 1.0 - min(distances)
    return similarity if similarity >= threshold else 0.0


# --------------------------------------------------------------------- POPE
POPE_CONVENTIONS = {"pope": "official", "pope_exact": "exact"}
"""Metric name -> how a POPE answer is classified (`pope_answer`)."""
_POPE_NO_WORDS = frozenset({"no", "No", "not"})


def pope_answer(prediction: str, convention: str = "official") -> str:
    """Classify a POPE answer as "yes", "no" or (exact convention only) "other".

    "official" (the POPE paper's evaluate.py, LLaVA's eval_pope.py): keep the text before the first
    period, delete commas, split at spaces; "no", "No" or "not" among the words -> "no", anything else
    (an empty answer, "1", "NO", "Not sure") -> "yes". "exact" (lmms-eval): the answer lowercased and
    stripped is "yes" or "no", else "other".
    """
    if convention == "official":
        words = prediction.split(".", 1)[0].replace(",", "").split(" ")
        return "no" if _POPE_NO_WORDS.intersection(words) else "yes"
    if convention == "exact":
        answer = prediction.lower().strip()
        return answer if answer in ("yes", "no") else "other"
    raise ValueError(f"POPE convention {convention!r}; expected 'official' or 'exact'")


def _pope_label(label: str) -> str:
    truth = label.strip().lower()
    if truth not in ("yes", "no"):
        raise ValueError(f"POPE label {label!r}; expected 'yes' or 'no'")
    return truth


def _begins_yes_or_no(prediction: str) -> bool:
    words = normalize_answer(prediction).split()
    return bool(words) and words[0] in ("yes", "no")


def _pope_class(prediction: str | None, truth: str, convention: str) -> str:
    """`pope_answer`, or for a failed sample (None) the wrong class: the other label ("official"),
    "other" ("exact"), so that it is wrong and every figure still comes from one classification."""
    if prediction is not None:
        return pope_answer(prediction, convention)
    if convention == "exact":
        return "other"
    return "no" if truth == "yes" else "yes"


def pope_metrics(
    predictions: Sequence[str | None], labels: Sequence[str], convention: str = "official"
) -> dict[str, Any]:
    """POPE accuracy, precision, recall, F1 (positive class "yes") and yes_ratio, all from one
    classification of the answers (`pope_answer` with `convention`; a failed sample, None, gets
    the wrong class).

    Counts tp/fp/tn/fn; accuracy = (tp + tn) / n and yes_ratio = answers classified "yes" / n. Under
    "exact" an "other" answer is wrong whatever the label and enters no precision/recall count (as in
    lmms-eval). `other` counts the answers that do not begin with "yes" or "no" (after
    `normalize_answer`; under "exact": that are not exactly yes/no), whichever class they were given.
    Precision, recall and F1 are 0.0 when undefined (no yes answers / no yes labels).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_metrics got {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("pope_metrics needs at least one prediction; got none")
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    other = 0
    for prediction, label in zip(predictions, labels):
        truth = _pope_label(label)
        answer = _pope_class(prediction, truth, convention)
        if prediction is not None:
            other += answer == "other" if convention == "exact" else not _begins_yes_or_no(prediction)
        if answer == "yes":
            counts["tp" if truth == "yes" else "fp"] += 1
        elif answer == "no":
            counts["fn" if truth == "yes" else "tn"] += 1
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "other": other,
        **counts,
        "n": n,
        "convention": convention,
    }


# ---------------------------------------------------------- multiple choice
_BARE_LETTER = re.compile(r"[(\[]?\s*([A-Za-z])\s*[)\]]?[.:)]?")
_LEADING_LETTER = re.compile(r"[(\[]([A-Z])[)\]]|([A-Z])[.:)](?=\s|$)")
_ANNOUNCED_LETTER = re.compile(
    r"\b(?i:answer|option|choice|choose|select|pick)(?:\s+is)?\s*[:\-]?\s*[(\[]?([A-Z])[)\]]?(?![A-Za-z])"
)
_BRACKETED_LETTER = re.compile(r"[(\[]([A-Z])[)\]]")


def _match_choice_text(prediction: str, choices: Sequence[str]) -> int | None:
    """The index of the option the prediction spells out, or None if none or ambiguous."""
    said = normalize_answer(prediction)
    options = [normalize_answer(choice) for choice in choices]
    if said in options and options.count(said) == 1:
        return options.index(said)
    found = [
        i
        for i, option in enumerate(options)
        if option and re.search(rf"(?<!\S){re.escape(option)}(?!\S)", said)
    ]
    if len(found) == 1:
        return found[0]
    if found:  # "dark red" mentions both "red" and "dark red": keep the one containing the others
        longest = max(found, key=lambda i: len(options[i]))
        if (
            all(options[i] in options[longest] for i in found)
            and sum(len(options[i]) == len(options[longest]) for i in found) == 1
        ):
            return longest
    return None


def extract_choice(
    prediction: str | None, n_choices: int, choices: Sequence[str] | None = None
) -> str | None:
    """The option letter a free-form answer picks, or None when it cannot be read.

    Tried in order, keeping only letters among the first `n_choices`: the whole answer is one
    option's text, exactly (A-OKVQA's official rule); the whole answer is a
    letter ("B", "b", "(B)", "B."); it starts with a marked letter ("B. red", "(B) red"); a
    letter is announced ("The answer is B", "Answer: (C)", "I choose D"); exactly one bracketed
    letter appears anywhere; the answer spells out one option's text (needs `choices`).
    """
    if not 1 <= n_choices <= len(CHOICE_LETTERS):
        raise ValueError(f"n_choices={n_choices}; expected 1..{len(CHOICE_LETTERS)}")
    letters = CHOICE_LETTERS[:n_choices]
    text = (prediction or "").strip()
    if not text:
        return None
    options = list(choices[:n_choices]) if choices else []
    if options.count(text) == 1:
        return letters[options.index(text)]
    bare = _BARE_LETTER.fullmatch(text)
    if bare and bare.group(1).upper() in letters:
        return bare.group(1).upper()
    leading = _LEADING_LETTER.match(text)
    if leading and (leading.group(1) or leading.group(2)) in letters:
        return leading.group(1) or leading.group(2)
    for announced in _ANNOUNCED_LETTER.finditer(text):
        if announced.group(1) in letters:
            return announced.group(1)
    bracketed = {m.group(1) for m in _BRACKETED_LETTER.finditer(text)} & set(letters)
    if len(bracketed) == 1:
        return bracketed.pop()
    if options:
        index = _match_choice_text(text, options)
        if index is not None:
            return letters[index]
    return None


def choice_accuracy(
    predictions: Sequence[str | None],
    targets: Sequence[str],
    choices: Sequence[int | Sequence[str]],
) -> dict[str, float | int]:
    """Multiple-choice accuracy; `choices[i]` is sample i's option texts or just their number.

    An answer no letter can be read from counts as wrong and is counted in `unparsed`, so a
    model that ignores the answer format is visible rather than silently scored low.
    """
    if not len(predictions) == len(targets) == len(choices):
        raise ValueError(
            f"choice_accuracy got {len(predictions)} predictions, {len(targets)} targets, {len(choices)} choice lists"
        )
    if not targets:
        raise ValueError("choice_accuracy needs at least one prediction; got none")
    correct = unparsed = 0
    for prediction, target, options in zip(predictions, targets, choices):
        texts = None if isinstance(options, int) else list(options)
        letter = extract_choice(prediction, options if isinstance(options, int) else len(options), texts)
        unparsed += letter is None
        correct += letter is not None and letter == target.strip().upper()
    return {"accuracy": correct / len(targets), "unparsed": unparsed, "n": len(targets)}


# ---------------------------------------------------------------- intervals
def bootstrap_ci(values: Iterable[float], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (`n` resamples, fixed `seed`)."""
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value; got none")
    if n < 1:
        raise ValueError(f"bootstrap_ci n={n}; expected >= 1 resamples")
    rng = np.random.default_rng(seed)
    means = np.empty(n, dtype=np.float64)
    chunk = max(1, 2_000_000 // data.size)  # bound the index matrix to ~16 MB
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        means[start:stop] = data[rng.integers(0, data.size, size=(stop - start, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


# ------------------------------------------------------------------ records
_OPTION_LINE = re.compile(r"^([A-Z])\. (.*)$")

_PER_ANSWER: dict[str, Callable[[str, Sequence[str]], float]] = {
    "vqa": vqa_soft_accuracy,
    "exact": exact_match,
    "gqa": gqa_accuracy,
    "anls": anls,
    "aokvqa_da": aokvqa_direct_accuracy,
}
_LEFT_OUT: dict[str, tuple[str, Any]] = {
    "gqa": ("isBalanced", False),  # GQA's eval.py scores balanced questions only
    "aokvqa_da": ("difficult_direct_answer", True),  # A-OKVQA's direct-answer evaluation skips these
}
"""Metric -> (meta key, value): records whose `meta[key]` is that value are not scored (`excluded`)."""


def _record_choices(record: Mapping[str, Any]) -> list[str] | None:
    """The options of a record: its `choices`, else the "A. ..." lines of its formatted question."""
    if record.get("choices"):
        return list(record["choices"])
    options: list[str] = []
    for line in str(record.get("question") or "").splitlines():
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == CHOICE_LETTERS[len(options)]:
            options.append(match.group(2))
    return options or None


def _left_out(record: Mapping[str, Any], metric: str) -> bool:
    rule = _LEFT_OUT.get(metric)
    return rule is not None and (record.get("meta") or {}).get(rule[0]) is rule[1]


def score(
    records: Sequence[Mapping[str, Any]], metric: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Score prediction records (`prediction`, `answers`, optional `error`, `choices`, `question`, `meta`).

    Returns `metric`, `n` (records scored), `accuracy` with its bootstrap `ci95`, plus the metric's
    extras (pope, pope_exact: precision, recall, f1, yes_ratio, other, tp/fp/tn/fn; choice: unparsed).
    Records without reference answers are left out and counted in `unscored`; those the benchmark's
    evaluation leaves out (GQA `isBalanced: false`, A-OKVQA `difficult_direct_answer` for aokvqa_da)
    in `excluded`. Records with an `error` are counted in `errors`; one without a prediction (a failed
    sample) scores 0 (POPE: the wrong class, see `pope_metrics`). For "choice", options come from the
    record (`choices`, else the question's "A. ..." lines); with neither, any letter is accepted.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    answered = [r for r in records if r.get("answers")]
    scored = [r for r in answered if not _left_out(r, metric)]
    result: dict[str, Any] = {
        "metric": metric,
        "n": len(scored),
        "unscored": len(records) - len(answered),
        "excluded": len(answered) - len(scored),
        "errors": sum(r.get("error") is not None for r in records),
    }
    if not scored:
        return {**result, "accuracy": None, "ci95": None}
    predictions = [None if r.get("prediction") is None else str(r["prediction"]) for r in scored]
    if metric in _PER_ANSWER:
        rule = _PER_ANSWER[metric]
        values = [0.0 if p is None else rule(p, r["answers"]) for p, r in zip(predictions, scored)]
    elif metric in POPE_CONVENTIONS:
        convention = POPE_CONVENTIONS[metric]
        labels = [r["answers"][0] for r in scored]
        result.update(pope_metrics(predictions, labels, convention))
        values = [
            float(_pope_class(p, _pope_label(t), convention) == _pope_label(t)) for p, t in zip(predictions, labels)
        ]
    else:
        options = [_record_choices(r) or len(CHOICE_LETTERS) for r in scored]
        targets = [r["answers"][0] for r in scored]
        result.update(choice_accuracy(predictions, targets, options))
        values = []
        for p, t, o in zip(predictions, targets, options):
            texts = None if isinstance(o, int) else o
            values.append(
                float(extract_choice(p, o if isinstance(o, int) else len(o), texts) == t.strip().upper())
            )
    result["n"] = len(scored)
    result["accuracy"] = float(np.mean(values))
    result["ci95"] = list(bootstrap_ci(values, n=n_boot, seed=seed))
    return result
