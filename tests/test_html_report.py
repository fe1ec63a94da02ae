"""`laser compare RUN ... --html`: the browsable report of the shipped testbed runs, loaded in headless
Chromium (no console errors, the expected gallery, filters that change it), and its bad inputs (an empty
run folder, runs of two datasets, missing images)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from laser.records.files import RUN_CONFIG
from laser.records.metrics import normalize_answer, score
from laser.report.compare import compare
from laser.report.html import HtmlOptions, write_html
from laser.report.runs import EmptyRun, load_runs

ROOT = Path(__file__).resolve().parents[1]
TESTBED_RUNS = ROOT / "docs/testbed/seed0/runs"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    if os.environ.get("LASER_REQUIRE_CHROMIUM"):
        pytest.fail("LASER_REQUIRE_CHROMIUM is set but no chromium is installed (.ci/run installs Debian's)")
    pytest.skip("no chromium on this machine")


def load_page(index: Path, fragment: str = "") -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the console messages) of `index#fragment`."""
    url = index.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def status(dom: str) -> dict[str, str]:
    match = re.search(r'<div id="status"([^>]*)>', dom)
    assert match, "the page did not render its status"
    return dict(re.findall(r'data-(\w+)="([^"]*)"', match.group(1)))


def expected_gallery(folders: list[Path]) -> tuple[set[str], set[str]]:
    """Independently of the report: the sample_ids the runs' answers differ on, and those LASER gets right
    and vanilla wrong."""
    answers: dict[str, set] = {}
    correct: dict[str, dict[str, float]] = {}
    for folder in folders:
        method = json.loads((folder / RUN_CONFIG).read_text())["method"]["name"]
        for line in (folder / "predictions.rank0.jsonl").read_text().splitlines():
            record = json.loads(line)
            answers.setdefault(record["sample_id"], set()).add(normalize_answer(record["prediction"]))
            if folder.name in ("laser", "vanilla"):
                correct.setdefault(method, {})[record["sample_id"]] = score([record], "exact", n_boot=1)["accuracy"]
    disagree = {i for i, a in answers.items() if len(a) > 1}
    laser_only = {i for i in disagree if correct["laser"][i] > correct["vanilla"][i]}
    return disagree, laser_only


@pytest.fixture(scope="module")
def testbed_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    folders = sorted(p for p in TESTBED_RUNS.iterdir() if (p / RUN_CONFIG).is_file())
    result = compare(folders, out, n_boot=50, html=True)
    return out, folders, result


def test_the_testbed_report_loads_without_console_errors_and_shows_every_disagreement(testbed_report):
    out, folders, _ = testbed_report
    disagree, laser_only = expected_gallery(folders)
    assert len(disagree) > 100 and laser_only  # the runs differ on many samples
    dom, console = load_page(out / "index.html")
    assert console == []
    shown = status(dom)
    assert shown["rendered"] == "yes"
    assert int(shown["matching"]) == len(disagree)
    assert int(shown["cards"]) == HtmlOptions().per_page
    assert f'<span id="count">{len(disagree)}</span>' in dom
    assert "<table>" in dom and 'src="vaq_per_layer.png"' in dom


def test_a_filter_changes_what_the_gallery_shows(testbed_report):
    out, folders, _ = testbed_report
    _, laser_only = expected_gallery(folders)
    dom, console = load_page(out / "index.html", "outcome=focus_right")
    assert console == []
    assert int(status(dom)["matching"]) == len(laser_only)
    cards = set(re.findall(r'<div class="card" data-id="(testbed-[^"]+)"', dom))
    assert cards and cards <= laser_only
    dom, _ = load_page(out / "index.html", "outcome=focus_right&path=contrastive&meta.family=reading")
    assert 0 < int(status(dom)["matching"]) < len(laser_only)
    dom, _ = load_page(out / "index.html", "shown=rest")
    assert int(status(dom)["matching"]) == HtmlOptions().rest  # a random page of the agreeing samples


def test_thumbnails_are_made_once_and_reused(testbed_report, tmp_path):
    out, folders, _ = testbed_report
    runs = load_runs(folders[:2])
    first = tmp_path / "again"
    write_html(runs, "", first, [])
    made = len(list((first / "thumbs").glob("*.jpg")))
    stamps = {p.name: p.stat().st_mtime_ns for p in (first / "thumbs").glob("*.jpg")}
    write_html(runs, "", first, [])
    assert made > 0 and {p.name: p.stat().st_mtime_ns for p in (first / "thumbs").glob("*.jpg")} == stamps


# ------------------------------------------------------------------ bad input
def _run(folder: Path, method: str, annotations: Path, predictions: list[str], image_root: Path | None = None):
    folder.mkdir(parents=True)
    data = {"format": "jsonl", "annotations": str(annotations), "metric": "exact"}
    if image_root is not None:
        data["image_root"] = str(image_root)
    (folder / RUN_CONFIG).write_text(json.dumps({"model": {"name_or_path": "m"}, "data": data, "method": {"name": method}}))
    lines = [json.dumps({"sample_id": f"s{i}", "question": "q?", "answers": ["a"], "prediction": p, "layer": 1,
                         "box": [0, 0, 4, 4], "path": "direct", "error": None}) for i, p in enumerate(predictions)]
    (folder / "predictions.rank0.jsonl").write_text("\n".join(lines) + "\n")


def _dataset(folder: Path, n: int = 3, with_images: bool = True) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        if with_images:
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"s{i}.png")
    path = folder / "eval.jsonl"
    path.write_text("".join(json.dumps({"sample_id": f"s{i}", "image": f"s{i}.png", "question": "q?", "answers": ["a"]}) + "\n"
                            for i in range(n)))
    return path


def test_an_empty_run_folder_is_skipped_with_a_note(tmp_path):
    annotations = _dataset(tmp_path / "data")
    _run(tmp_path / "vanilla", "vanilla", annotations, ["a", "b", "a"])
    _run(tmp_path / "laser", "laser", annotations, ["a", "a", "a"])
    (tmp_path / "empty").mkdir()
    result = compare([tmp_path / "vanilla", tmp_path / "laser", tmp_path / "empty"], tmp_path / "out", n_boot=10, html=True)
    assert len(result["empty"]) == 1 and "empty" in result["empty"][0]
    page = (tmp_path / "out/index.html").read_text()
    assert "holds no predictions" in page
    with pytest.raises(EmptyRun, match="no run holds predictions"):
        compare([tmp_path / "empty"], tmp_path / "out2", html=True)


def test_runs_of_two_datasets_get_one_gallery_each(tmp_path):
    first, second = _dataset(tmp_path / "d1"), _dataset(tmp_path / "d2", n=2)
    _run(tmp_path / "v1", "vanilla", first, ["a", "b", "a"])
    _run(tmp_path / "l1", "laser", first, ["a", "a", "a"])
    _run(tmp_path / "v2", "vanilla", second, ["x", "a"])
    _run(tmp_path / "l2", "laser", second, ["a", "a"])
    out = tmp_path / "out"
    compare([tmp_path / n for n in ("v1", "l1", "v2", "l2")], out, n_boot=10, html=True)
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>',
                                (out / "index.html").read_text(), re.S).group(1))
    assert sorted(data["datasets"]) == ["d1/eval", "d2/eval"]
    assert {(e["dataset"], e["id"]) for e in data["entries"] if e["shown"] == "disagree"} == {("d1/eval", "s1"), ("d2/eval", "s0")}
    assert any("2 datasets" in note for note in data["notes"])
    dom, console = load_page(out / "index.html", "dataset=d2/eval")
    assert console == [] and int(status(dom)["matching"]) == 1


def test_missing_images_get_a_placeholder_and_a_note(tmp_path):
    annotations = _dataset(tmp_path / "data", with_images=False)
    _run(tmp_path / "vanilla", "vanilla", annotations, ["a", "b", "c"])
    _run(tmp_path / "laser", "laser", annotations, ["b", "a", "a"])
    gone = tmp_path / "gone"  # annotations that no longer exist
    _run(tmp_path / "vicrop", "vicrop", gone / "eval.jsonl", ["c", "c", "c"])
    out = tmp_path / "out"
    compare([tmp_path / "vanilla", tmp_path / "laser"], out, n_boot=10, html=True)
    dom, console = load_page(out / "index.html")
    assert console == []
    assert int(status(dom)["matching"]) == 3 and dom.count("no image: image ") == 3 and "not found" in dom
    compare([tmp_path / "vicrop", tmp_path / "vanilla"], tmp_path / "out2", n_boot=10, html=True)
    assert "not found: no images" in (tmp_path / "out2/index.html").read_text()


def test_text_that_looks_like_markup_cannot_break_the_page(tmp_path):
    annotations = _dataset(tmp_path / "data")
    _run(tmp_path / "vanilla", "vanilla", annotations, ["<!--<script>", "</script><b>x</b>", "a & b"])
    _run(tmp_path / "laser", "laser", annotations, ["a", "{{DATA}}", "a"])
    out = tmp_path / "out"
    compare([tmp_path / "vanilla", tmp_path / "laser"], out, n_boot=10, html=True)
    dom, console = load_page(out / "index.html")
    assert console == [] and int(status(dom)["matching"]) == 3
    assert "&lt;!--&lt;script&gt;" in dom and "<b>x</b>" not in dom


def test_the_thumbnail_is_upright_as_the_data_loader_reads_it(tmp_path):
    from laser.report.html import Thumbnails

    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 20 x 40
    image.save(tmp_path / "photo.jpg", exif=exif)
    name, size, note = Thumbnails(tmp_path / "thumbs", 16).get(tmp_path / "photo.jpg")
    assert note is None and size == (20, 40)
    assert Image.open(tmp_path / "thumbs" / name).size == (8, 16)
