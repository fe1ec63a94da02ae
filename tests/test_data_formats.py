"""Annotation readers: the generic JSONL format, each official format, errors and the MC prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laser.data import READERS, VQASample, format_question, read_annotations
from laser.data.formats import default_image_root


def write_lines(path: Path, lines: list[bytes | str | dict]) -> Path:
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        chunks.append(line if isinstance(line, bytes) else line.encode("utf-8"))
    path.write_bytes(b"\n".join(chunks) + b"\n")
    return path


def write_json(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


GOOD = {"sample_id": "q1", "image": "a.jpg", "question": "What?", "answers": ["cat", "cat"]}


# -------------------------------------------------------------------- jsonl
def test_jsonl_reads_answers_answer_choices_and_meta(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "q.jsonl",
        [
            GOOD,
            "",  # blank lines are ignored
            {"sample_id": 7, "image": "b.png", "question": "How many?", "answer": 2, "category": "count"},
            {
                "sample_id": "q3",
                "image": "c.jpg",
                "question": "Color?",
                "answer": "blue",
                "choices": ["red", "blue"],
            },
            {
                "sample_id": "q4",
                "image": "d.jpg",
                "question": "Q",
                "answers": ["b"],
                "choices": ["x", "y"],
                "meta": {"k": 1},
            },
        ],
    )
    samples = read_annotations("jsonl", path)
    assert samples.errors == []
    assert samples[0] == VQASample("q1", "a.jpg", "What?", ["cat", "cat"])
    assert samples[1].sample_id == "7" and samples[1].answers == ["2"]
    assert samples[1].meta == {"category": "count"}  # extra keys are kept in meta
    assert samples[2].choices == ["red", "blue"] and samples[2].answers == ["B"]  # option text -> letter
    assert samples[3].answers == ["B"] and samples[3].meta == {"k": 1}


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        (b'{"sample_id": "x", "image": "\xff\xfe.jpg"}', "not valid UTF-8"),
        (b'{"sample_id": "x", "image": ', "not valid JSON"),
        (b'{"sample_id": "x", "question": "q", "answers": []}', "'image'"),
        (b'{"sample_id": "x", "image": "i", "question": "q"}', "'answers'"),
        (b'{"sample_id": "x", "image": "i", "question": "q", "answers": "cat"}', "list of strings"),
        (b"[1, 2]", "expected a JSON object"),
        (
            b'{"sample_id": "x", "image": "i", "question": "q", "answer": "Z", "choices": ["a", "b"]}',
            "option letter A-B",
        ),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: bytes, needle: str) -> None:
    path = write_lines(tmp_path / "q.jsonl", [GOOD, "", bad_line])
    with pytest.raises(ValueError) as info:
        read_annotations("jsonl", path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and needle in message


def test_jsonl_skip_records_errors_and_keeps_good_lines(tmp_path: Path) -> None:
    second = dict(GOOD, sample_id="q2")
    path = write_lines(tmp_path / "q.jsonl", [GOOD, b"\xff{", "not json", second])
    samples = read_annotations("jsonl", path, on_error="skip")
    assert [s.sample_id for s in samples] == ["q1", "q2"]
    assert len(samples.errors) == 2
    assert "line 2" in samples.errors[0] and "line 3" in samples.errors[1]


def test_duplicate_sample_id_is_an_error_naming_the_id(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [GOOD, dict(GOOD, question="again")])
    with pytest.raises(ValueError, match=r"line 2: duplicate sample_id 'q1' \(first at line 1\)"):
        read_annotations("jsonl", path)
    skipped = read_annotations("jsonl", path, on_error="skip")
    assert [s.question for s in skipped] == ["What?"] and "duplicate sample_id 'q1'" in skipped.errors[0]


def test_jsonl_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    assert read_annotations("jsonl", path)[0].sample_id == "q1"


def test_read_annotations_rejects_bad_format_path_and_options(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [GOOD])
    with pytest.raises(ValueError, match="unknown annotation format 'coco'.*jsonl"):
        read_annotations("coco", path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_annotations("jsonl", tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="on_error='ignore'"):
        read_annotations("jsonl", path, on_error="ignore")
    with pytest.raises(ValueError, match="does not take option.*shuffle"):
        read_annotations("jsonl", path, shuffle=True)
    assert set(READERS) == {"jsonl", "textvqa", "pope", "aokvqa", "vstar", "gqa", "docvqa"}


# --------------------------------------------------------- official formats
def test_textvqa(tmp_path: Path) -> None:
    answers = ["nokia"] * 7 + ["nokia phone"] * 3
    doc = {
        "dataset_name": "textvqa",
        "data": [
            {
                "question_id": 34602,
                "image_id": "0054c91397f2fe05",
                "question": "what brand?",
                "answers": answers,
            }
        ],
    }
    (sample,) = read_annotations("textvqa", write_json(tmp_path / "TextVQA_0.5.1_val.json", doc))
    assert sample.sample_id == "34602" and sample.image == "0054c91397f2fe05.jpg"
    assert sample.answers == answers and sample.choices is None


def test_textvqa_bad_entry_and_bad_json(tmp_path: Path) -> None:
    doc = {"data": [{"question_id": 1, "image_id": "a", "question": "q", "answers": []}, {"question_id": 2}]}
    with pytest.raises(ValueError, match=r"data\[1\]: missing required key 'image_id'"):
        read_annotations("textvqa", write_json(tmp_path / "t.json", doc))
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [\n  {"question_id": 1,\n  oops}\n]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.json, line 3: not valid JSON"):
        read_annotations("textvqa", broken)
    with pytest.raises(ValueError, match="'data' list"):
        read_annotations("textvqa", write_json(tmp_path / "list.json", [1, 2]))


def test_pope(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "coco_pope_random.json",
        [
            {
                "question_id": 1,
                "image": "COCO_val2014_000000310196.jpg",
                "text": "Is there a snowboard in the image?",
                "label": "yes",
            },
            {
                "question_id": 2,
                "image": "COCO_val2014_000000310196.jpg",
                "text": "Is there a dog in the image?",
                "label": "No",
            },
        ],
    )
    first, second = read_annotations("pope", path)
    assert first.question == "Is there a snowboard in the image?" and first.answers == ["yes"]
    assert second.answers == ["no"] and second.meta["label"] == "no"
    bad = write_lines(
        tmp_path / "bad.json", [{"question_id": 1, "image": "x.jpg", "text": "q", "label": "maybe"}]
    )
    with pytest.raises(ValueError, match="line 1: key 'label' is 'maybe'; expected 'yes' or 'no'"):
        read_annotations("pope", bad)


AOK = {
    "question_id": "22MexNkBPpdZGX6sxbxVBH",
    "image_id": 299207,
    "question": "What is the man by the bags awaiting?",
    "choices": ["skateboarder", "train", "delivery", "cab"],
    "correct_choice_idx": 3,
    "direct_answers": [
        "ride",
        "ride",
        "bus",
        "taxi",
        "travelling",
        "traffic",
        "taxi",
        "cab",
        "cab",
        "his ride",
    ],
    "difficult_direct_answer": False,
}


def test_aokvqa_multiple_choice_and_direct(tmp_path: Path) -> None:
    path = write_json(tmp_path / "aokvqa_v1p0_val.json", [AOK])
    (mc,) = read_annotations("aokvqa", path)
    assert mc.image == "val2017/000000299207.jpg"
    assert mc.choices == AOK["choices"] and mc.answers == ["D"] and mc.meta["correct_choice"] == "cab"
    (da,) = read_annotations("aokvqa", path, multiple_choice=False, image_dir="images")
    assert (
        da.choices is None and da.answers == AOK["direct_answers"] and da.image == "images/000000299207.jpg"
    )
    (train,) = read_annotations("aokvqa", write_json(tmp_path / "aokvqa_v1p0_train.json", [AOK]))
    assert train.image.startswith("train2017/")
    bad = write_json(tmp_path / "bad.json", [dict(AOK, correct_choice_idx=4)])
    with pytest.raises(ValueError, match=r"entry 0: key 'correct_choice_idx' is 4; expected 0..3"):
        read_annotations("aokvqa", bad)


def make_vstar(root: Path) -> Path:
    for category, stem, options in [
        ("direct_attributes", "sa_1", ["white", "black", "red", "blue"]),
        ("direct_attributes", "sa_2", ["green", "pink", "gray", "brown"]),
        ("relative_position", "sa_9", ["left", "right"]),
    ]:
        write_json(
            root / category / f"{stem}.json",
            {"question": f"Q {stem}?", "options": options, "target_object": ["x"]},
        )
        (root / category / f"{stem}.jpg").write_bytes(b"")
    return root


def test_vstar_shuffles_with_a_stable_permutation_and_tracks_the_answer(tmp_path: Path) -> None:
    root = make_vstar(tmp_path / "vstar_bench")
    samples = read_annotations("vstar", root)
    assert [s.sample_id for s in samples] == [
        "direct_attributes/sa_1",
        "direct_attributes/sa_2",
        "relative_position/sa_9",
    ]
    for sample in samples:
        letter = sample.answers[0]
        assert sample.choices[ord(letter) - ord("A")] == sample.meta["correct_choice"]
        assert sample.image == f"{sample.sample_id}.jpg"
    assert samples[0].meta["correct_choice"] == "white" and samples[0].meta["target_object"] == ["x"]
    assert sorted(samples[0].choices) == sorted(["white", "black", "red", "blue"])
    again = read_annotations("vstar", root)
    assert [s.choices for s in again] == [s.choices for s in samples]  # same permutation every run
    unshuffled = read_annotations("vstar", root, shuffle=False)
    assert unshuffled[2].choices == ["left", "right"] and unshuffled[2].answers == ["A"]
    # over many ids the correct option does not always land on "A"
    from laser.data.benchmarks import _shuffled_order

    positions = {_shuffled_order(f"id{i}", 4, 0).index(0) for i in range(40)}
    assert positions == {0, 1, 2, 3}


def test_vstar_needs_the_benchmark_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no direct_attributes/ or relative_position/ subfolder"):
        read_annotations("vstar", tmp_path)
    root = make_vstar(tmp_path / "v")
    (root / "direct_attributes" / "sa_3.json").write_text("{oops", encoding="utf-8")
    samples = read_annotations("vstar", root, on_error="skip")
    assert len(samples) == 3 and "direct_attributes/sa_3.json" in samples.errors[0]


def test_gqa(tmp_path: Path) -> None:
    doc = {
        "20968379": {
            "imageId": "n288870",
            "question": "Do the shorts have dark color?",
            "answer": "yes",
            "types": {"structural": "verify"},
        },
        "201307251": {"imageId": "2354786", "question": "Is it overcast?", "answer": "no"},
    }
    samples = read_annotations("gqa", write_json(tmp_path / "testdev_balanced_questions.json", doc))
    assert [(s.sample_id, s.image, s.answers) for s in samples] == [
        ("20968379", "n288870.jpg", ["yes"]),
        ("201307251", "2354786.jpg", ["no"]),
    ]
    assert samples[0].meta["types"] == {"structural": "verify"}
    with pytest.raises(ValueError, match="question '1': missing required key 'imageId'"):
        read_annotations("gqa", write_json(tmp_path / "bad.json", {"1": {"question": "q", "answer": "a"}}))


def test_docvqa(tmp_path: Path) -> None:
    doc = {"data": [{"questionId": 52212, "question": "Whose signature is given?", "image": "documents/txpn0095_1.png",
                     "docId": 1968, "answers": ["Edward R. Shannon", "Edward Shannon"]}]}  # fmt: skip
    (sample,) = read_annotations("docvqa", write_json(tmp_path / "val_v1.0.json", doc))
    assert sample.sample_id == "52212" and sample.image == "documents/txpn0095_1.png"
    assert sample.answers == ["Edward R. Shannon", "Edward Shannon"] and sample.meta == {"docId": 1968}
    test_doc = {"data": [{"questionId": 1, "question": "q", "image": "documents/a.png"}]}
    assert read_annotations("docvqa", write_json(tmp_path / "test_v1.0.json", test_doc))[0].answers == []


def test_default_image_root(tmp_path: Path) -> None:
    assert default_image_root("textvqa", tmp_path / "a" / "val.json") == tmp_path / "a"
    assert default_image_root("vstar", tmp_path / "vstar_bench") == tmp_path / "vstar_bench"


# ---------------------------------------------------------- question prompt
def test_format_question_open_and_multiple_choice() -> None:
    assert format_question(VQASample("1", "i.jpg", "What is it?", ["cat"])) == "What is it?"
    sample = VQASample("2", "i.jpg", "What color is the bus?", ["B"], choices=["red", "yellow", "blue"])
    assert format_question(sample) == (
        "What color is the bus?\nA. red\nB. yellow\nC. blue\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_sample_rejects_too_few_choices() -> None:
    with pytest.raises(ValueError, match="sample 'x' has 1 choices; expected between 2 and 26"):
        VQASample("x", "i.jpg", "q", ["A"], choices=["only"])
