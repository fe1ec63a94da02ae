"""Reliability, bad input: every odd-but-valid image is answered, every broken sample becomes an error
record naming the cause while the run goes on, and every bad command is one `laser: error:` line.

One saved tiny model and one `laser predict` run (in-process) over a dataset of all the cases."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_fixtures import predict_args, records_by_id, save_tiny_llava

from laser.cli import main
from laser.data import load_image

QUESTION = "What is the color ?"
RNG = np.random.default_rng(0)


def rgb(width: int, height: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def exif_rotated(path: Path) -> None:
    """A 60x20 JPEG, left half red, right half blue, tagged Orientation=6 (shown rotated 90 deg clockwise:
    20 wide, 60 tall, red on top)."""
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def palette_with_transparency(path: Path) -> None:
    image = rgb(50, 40).convert("P")
    image.info["transparency"] = 0
    image.save(path, transparency=0)


# name -> (writer, (width, height) the model must see)
ODD = {
    "one_pixel.png": (lambda p: rgb(1, 1).save(p), (1, 1)),
    "wide_4000x20.png": (lambda p: rgb(4000, 20).save(p), (4000, 20)),
    "tall_20x4000.png": (lambda p: rgb(20, 4000).save(p), (20, 4000)),
    "grayscale.png": (lambda p: rgb(64, 48).convert("L").save(p), (64, 48)),
    "rgba.png": (lambda p: rgb(64, 48).convert("RGBA").save(p), (64, 48)),
    "palette.png": (palette_with_transparency, (50, 40)),
    "cmyk.jpg": (lambda p: rgb(64, 48).convert("CMYK").save(p), (64, 48)),
    "sixteen_bit.png": (lambda p: Image.fromarray(RNG.integers(0, 65535, (48, 64)).astype(np.uint16)).save(p), (64, 48)),
    "exif_rotated.jpg": (exif_rotated, (20, 60)),
    "below_min_crop_side.png": (lambda p: rgb(100, 60).save(p), (100, 60)),
}


def truncated(path: Path) -> None:
    rgb(80, 60).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# name -> (writer or None for no file, words the error must contain)
BROKEN = {
    "truncated.png": (truncated, ["cannot load image", "truncated.png"]),
    "corrupt.jpg": (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 40), ["cannot load image", "corrupt.jpg"]),
    "zero_bytes.png": (lambda p: p.write_bytes(b""), ["0 bytes", "zero_bytes.png"]),
    "missing.png": (None, ["not found", "missing.png"]),
    "a_folder.png": (lambda p: p.mkdir(), ["directory", "a_folder.png"]),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = save_tiny_llava(root / "model", image_size=112)
    images = root / "data" / "images"
    images.mkdir(parents=True)
    rgb(80, 60).save(images / "ok.png")
    lines = []
    for name, (write, _) in {**ODD, **BROKEN}.items():
        if write is not None:
            write(images / name)
        lines.append({"sample_id": name, "image": f"images/{name}", "question": QUESTION, "answers": ["red"]})
    lines.append({"sample_id": "empty_question", "image": "images/ok.png", "question": "  ", "answers": ["red"]})
    too_long = " ".join(["red"] * 4200)  # 4200 words + 64 visual tokens > max_position_embeddings=4096
    lines.append({"sample_id": "question_too_long", "image": "images/ok.png", "question": too_long, "answers": ["red"]})
    lines.append({"sample_id": "ok", "image": "images/ok.png", "question": QUESTION, "answers": ["red"]})
    annotations = root / "data" / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = root / "out"
    code = main(["predict", *predict_args(model, annotations, out, "data.batch_size=4", "method.decode.max_new_tokens=2")])
    assert code == 0
    return root, model, annotations, records_by_id(out)


def test_every_sample_gets_exactly_one_record(run):
    root, model, annotations, records = run
    expected = [json.loads(line)["sample_id"] for line in annotations.read_text().splitlines()]
    assert sorted(records) == sorted(expected)


@pytest.mark.parametrize("name", list(ODD))
def test_odd_but_valid_images_are_answered(run, name):
    record = run[3][name]
    assert record["error"] is None, record["error"]
    assert isinstance(record["prediction"], str) and record["path"] in ("direct", "contrastive", "vanilla")
    width, height = ODD[name][1]
    if record["box"] is not None:  # the crop box lies inside the image as the model saw it
        x0, y0, x1, y1 = record["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (record["box"], (width, height))


def test_image_below_min_crop_side_and_exif_photo_are_seen_whole_and_upright(run):
    records = run[3]
    names = ("below_min_crop_side.png", "exif_rotated.jpg", "one_pixel.png")
    assert any(records[name]["path"] != "vanilla" for name in names)
    for name in names:
        if records[name]["path"] != "vanilla":  # crop min_side 224 > image: the crop is the whole image
            assert records[name]["box"] == [0, 0, *ODD[name][1]], (name, records[name]["box"])


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_images_give_error_records_naming_the_cause(run, name):
    record = run[3][name]
    assert record["prediction"] is None and record["error"]
    for word in BROKEN[name][1]:
        assert word in record["error"], record["error"]


def test_bad_questions_give_error_records(run):
    records = run[3]
    assert records["empty_question"]["error"] == "question is empty"
    long_error = records["question_too_long"]["error"]
    assert "max_position_embeddings=4096" in long_error and "decode.max_new_tokens=2" in long_error
    assert records["ok"]["error"] is None  # batched with the failing sample, answered one by one


def test_load_image_modes_and_exif_orientation(tmp_path):
    for name, (write, size) in ODD.items():
        write(tmp_path / name)
        image, error = load_image(tmp_path / name)
        assert error is None and image.mode == "RGB" and image.size == size, (name, error)
    upright, _ = load_image(tmp_path / "exif_rotated.jpg")
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[55, 10]
    assert top[0] > 200 and top[2] < 60, top  # red on top: the EXIF rotation was applied
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    grey16, _ = load_image(tmp_path / "sixteen_bit.png")
    assert 60 < np.asarray(grey16).mean() < 200  # rescaled, not clipped to white


def one_line_error(capsys, args, *needles):
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("laser: error:"), err
    assert not any("Traceback" in line for line in err)
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    return err[-1]


def test_bad_commands_are_one_line_errors(run, tmp_path, capsys):
    root, model, annotations, _ = run
    out = tmp_path / "out"
    unregistered = tmp_path / "bert"
    unregistered.mkdir()
    (unregistered / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    cases = [
        (predict_args(model, annotations, out, "model.adapter=no_such_adapter"), ["no_such_adapter"]),
        (predict_args(unregistered, annotations, out), ["BertModel"]),
        (predict_args(model, annotations, out, "seeed=1"), ["seeed"]),
        (predict_args(model, annotations, out, "trainer.gpus=1"), ["trainer.gpus"]),
        (predict_args(model, annotations, out, "method.decode.max_new_tokenz=1"), ["max_new_tokenz"]),
        (predict_args(model, annotations, out, "data.on_error=ignore"), ["on_error"]),
        (predict_args(model, annotations, out, "resume=true", "overwrite=true"), ["resume=true"]),
        (predict_args(model, tmp_path / "nowhere.jsonl", out), ["nowhere.jsonl", "do not exist"]),
    ]
    for args, needles in cases:
        one_line_error(capsys, ["predict", *args], *needles)
    assert not list(out.glob("predictions.rank*.jsonl"))


def annotation_file(folder: Path, ok: list[dict], bad_lines: dict[int, bytes]) -> Path:
    """Good JSON lines with raw `bad_lines` inserted at the given 1-based line numbers."""
    lines = [json.dumps(line).encode() for line in ok]
    for number in sorted(bad_lines):
        lines.insert(number - 1, bad_lines[number])
    path = folder / "annotations.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_annotation_lines_stop_the_command_naming_file_and_line(run, tmp_path, capsys):
    model = run[1]
    ok = [{"sample_id": f"q{i}", "image": str(run[0] / "data/images/ok.png"), "question": QUESTION, "answers": ["red"]} for i in range(2)]
    for bad, needle in [(b'{"sample_id": "q9", "image": ', "not valid JSON"), (b'{"sample_id": "q\xff\xfe"}', "UTF-8")]:
        path = annotation_file(tmp_path, ok, {2: bad})
        line = one_line_error(capsys, ["predict", *predict_args(model, path, tmp_path / "out")], f"{path}, line 2", needle)
        assert "data.on_error=skip" in line
    duplicate = annotation_file(tmp_path, ok + [ok[0]], {})
    one_line_error(capsys, ["predict", *predict_args(model, duplicate, tmp_path / "out")], "line 3", "duplicate sample_id 'q0'")


def test_on_error_skip_records_bad_lines_and_runs_the_rest(run, tmp_path, capsys):
    model = run[1]
    ok = [{"sample_id": f"q{i}", "image": str(run[0] / "data/images/ok.png"), "question": QUESTION, "answers": ["red"]} for i in range(2)]
    path = annotation_file(tmp_path, ok + [ok[1]], {1: b"not json", 3: b'{"sample_id": "\xff"}'})
    out = tmp_path / "out"
    args = predict_args(model, path, out, "data.on_error=skip", "method=vanilla", "method.decode.max_new_tokens=2")
    assert main(["predict", *args]) == 0
    assert "skipped 3 bad annotation entries" in capsys.readouterr().err
    assert sorted(records_by_id(out)) == ["q0", "q1"]
    skipped = (out / "annotation_errors.txt").read_text().splitlines()
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{path}, line {n}" for n in (1, 3, 5)]
    assert "duplicate sample_id 'q1'" in skipped[2]
