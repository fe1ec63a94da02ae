"""Benchmark metrics over prediction records: VQA soft accuracy, POPE, multiple choice, exact match, ANLS.

`score(records, metric)` is the entry point; the per-answer functions are exposed for tests
and for analyses that need per-sample values. All text comparisons go through
`normalize_answer`, the VQAv2/TextVQA answer normalisation.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("vqa", "pope", "choice", "exact", "anls")
DEFAULT_METRICS = {
    "jsonl": "exact",
    "textvqa": "vqa",
    "pope": "pope",
    "aokvqa": "choice",
    "vstar": "choice",
    "gqa": "exact",
    "docvqa": "anls",
}
"""The metric each data format is scored with unless the config names one."""
CHOICE_LETTERS = string.ascii_uppercase  # as laser.run.data.samples; not imported, to keep metrics light

# ------------------------------------------------------------- normalisation
# Punctuation the VQA evaluation strips; the apostrophe is kept (it belongs to contractions)
# and the period is handled separately (it may be a decimal point).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})

# Canonical contractions; answers typed without (some of) the apostrophes map back to these.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he'll he's how'd how'll how's i'd i'd've i'll i'm i've isn't it'd it'd've it'll let's ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd she'd've she'll
she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll something's that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we're we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've
why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll
you're you've
""".split()
# Apostrophe-free spellings that are ordinary words and must stay as they are.
_REAL_WORDS = frozenset({"its", "lets", "well", "were", "wed", "hell", "shell", "ill", "id", "shed", "whore"})


def _contraction_table() -> dict[str, str]:
    """Every spelling of each contraction with any non-empty subset of its apostrophes dropped."""
    table: dict[str, str] = {}
    for canonical in _CONTRACTIONS:
        marks = [i for i, ch in enumerate(canonical) if ch == "'"]
        for k in range(1, len(marks) + 1):
            for dropped in itertools.combinations(marks, k):
                variant = "".join(ch for i, ch in enumerate(canonical) if i not in dropped)
                if variant not in _REAL_WORDS:
                    table[variant] = canonical
    return table


_CONTRACTION_TABLE = _contraction_table()


def normalize_answer(answer: str) -> str:
    """The VQAv2/TextVQA answer normalisation, so "Two dogs." and "2 dogs" compare equal.

    Steps, as the official evaluation describes them: newlines/tabs become spaces; each
    punctuation mark is deleted when it touches a space (or when the text has a digit-comma-digit
    group such as "1,000"), otherwise replaced by a space ("left-hand" -> "left hand"); periods are
    deleted unless a digit follows ("3.5" stays); then the text is lowercased and split into
    words, number words zero..ten (and "none") become digits, the articles a/an/the are dropped,
    and apostrophe-less contractions are restored ("dont" -> "don't").
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if mark not in out:
            continue
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    out = _PERIOD_NOT_DECIMAL.sub("", out)
    words = []
    for word in out.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTION_TABLE.get(word, word))
    return " ".join(words)


# ------------------------------------------------------------ open answers
def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official VQA accuracy: min(1, matches/3), averaged over the leave-one-out subsets.

    With 10 (or more) reference answers the score averages min(1, matches/3) over the subsets
    that leave out one reference each (the official protocol: one match gives 0.3, two 0.6,
    three 0.9, four or more 1.0). With fewer than 10 there is no annotator pool to average over
    and min(1, matches/3) is used directly (one match of three answers gives 1/3).
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
    """Average Normalized Levenshtein Similarity of one answer (DocVQA's metric, Biten et al. 2019).

    Strings are compared lowercased with whitespace collapsed (not VQA-normalised: DocVQA answers
    are extracted text). Per reference: NL = edit distance / the longer length; the score is
    1 - NL when NL < `threshold`, else 0; the sample's value is the best over its references.
    """
    if not answers:
        raise ValueError("anls needs at least one reference answer; got none")
    predicted = " ".join(prediction.lower().split())
    best = 0.0
    for answer in answers:
        reference = " ".join(str(answer).lower().split())
        longest = max(len(predicted), len(reference))
        distance = levenshtein(predicted, reference) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


# --------------------------------------------------------------------- POPE
def _yes_no(text: str) -> str:
    words = normalize_answer(text).split()
    return words[0] if words and words[0] in ("yes", "no") else "other"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float | int]:
    """POPE accuracy, precision, recall, F1 (positive class "yes") and yes_ratio.

    A prediction is "yes" when its normalised first word is "yes"; everything else counts as
    "no", and those whose first word is not "no" either are counted in `other`. Precision,
    recall and F1 are 0.0 when undefined (no yes predictions / no yes labels).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_metrics got {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("pope_metrics needs at least one prediction; got none")
    tp = fp = tn = fn = other = 0
    for prediction, label in zip(predictions, labels):
        truth = label.strip().lower()
        if truth not in ("yes", "no"):
            raise ValueError(f"POPE label {label!r}; expected 'yes' or 'no'")
        answer = _yes_no(prediction or "")
        other += answer == "other"
        said_yes = answer == "yes"
        if said_yes:
            tp += truth == "yes"
            fp += truth == "no"
        else:
            fn += truth == "yes"
            tn += truth == "no"
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
        "n": n,
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

    Tried in order, keeping only letters among the first `n_choices`: the whole answer is a
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
    if choices:
        index = _match_choice_text(text, choices[:n_choices])
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


def score(
    records: Sequence[Mapping[str, Any]], metric: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Score prediction records (`prediction`, `answers`, optional `error`, `choices`, `question`).

    Returns `metric`, `n` (records scored), `accuracy` with its bootstrap `ci95`, plus the
    metric's extras (POPE: precision, recall, f1, yes_ratio, other; choice: unparsed).
    Records without reference answers are left out and counted in `unscored`; records with an
    `error` are scored as they are (a missing prediction is wrong) and counted in `errors`.
    For "choice", options come from the record (`choices`, else the question's "A. ..." lines);
    with neither, any letter is accepted.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    scored = [r for r in records if r.get("answers")]
    result: dict[str, Any] = {
        "metric": metric,
        "n": len(scored),
        "unscored": len(records) - len(scored),
        "errors": sum(r.get("error") is not None for r in records),
    }
    if not scored:
        return {**result, "accuracy": None, "ci95": None}
    predictions = [str(r.get("prediction") or "") for r in scored]
    if metric == "vqa":
        values = [vqa_soft_accuracy(p, r["answers"]) for p, r in zip(predictions, scored)]
    elif metric == "exact":
        values = [exact_match(p, r["answers"]) for p, r in zip(predictions, scored)]
    elif metric == "anls":
        values = [anls(p, r["answers"]) for p, r in zip(predictions, scored)]
    elif metric == "pope":
        labels = [r["answers"][0] for r in scored]
        result.update(pope_metrics(predictions, labels))
        values = [
            float(_yes_no(p) == ("yes" if label.strip().lower() == "yes" else "no"))
            for p, label in zip(predictions, labels)
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
