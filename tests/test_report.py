"""`laser compare` (tables checked against hand-made prediction files, figures exist and are images)
and `laser show` (a real tiny run, re-run on one sample and drawn)."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laser.report import compare as compare_cmd
from laser.report import show as show_cmd
from laser.report.runs import load_runs

N = 40
MODELS = {"org/model-a": 32, "org/model-b": 24}
DATASETS = {  # annotations -> (format, metric, answer vocabulary, relative depth of the VAQ peak)
    "/data/shapes/questions.jsonl": ("jsonl", "exact", ["red", "blue", "green"], 0.7),
    "/data/pope/coco_pope_random.json": ("pope", "pope", ["yes", "no"], 0.35),
}
ACCURACY = {"vanilla": 0.45, "laser": 0.6, "vicrop": 0.5}


def _method_config(name: str) -> dict:
    if name == "vanilla":
        return {"name": name, "localize": False, "decode": {"mode": "direct"}}
    if name == "vicrop":
        return {"name": name, "vaq": {"select": "fixed", "map": "ratio"}, "decode": {"mode": "direct"}}
    return {
        "name": name,
        "vaq": {"select": "vaq", "map": "contrastive"},
        "decode": {"mode": "auto"},
        "gate": {"depth": 0.5},
    }


def _records(model: str, annotations: str, method: str) -> list[dict]:
    fmt, _, vocab, peak = DATASETS[annotations]
    depth = MODELS[model]
    rng = np.random.default_rng(zlib.crc32(f"{model}{annotations}".encode()))  # same draws for every method
    u = rng.random(N)
    truth = rng.integers(0, len(vocab), N)
    wrong = (truth + 1) % len(vocab)
    out = []
    for i in range(N):
        correct = u[i] < ACCURACY[method]
        record = {
            "sample_id": f"q{i:03d}",
            "question": f"question {i}",
            "answers": [vocab[truth[i]]] * (1 if fmt == "pope" else 3),
            "prediction": vocab[truth[i]] if correct else vocab[wrong[i]],
            "layer": None, "vaq": None, "box": None, "path": "vanilla", "timings": {}, "error": None,
        }  # fmt: skip
        if method != "vanilla":
            x = np.arange(depth) / (depth - 1)
            vaq = np.exp(-((x - peak - rng.normal(0, 0.1)) ** 2) / 0.02) + rng.random(depth) * 0.2
            layer = int(np.argmax(vaq)) if method == "laser" else 14
            path = "contrastive" if method == "laser" and layer / depth >= 0.5 else "direct"
            record.update(vaq=vaq.tolist(), layer=layer, box=[10, 20, 110, 120], path=path)
        out.append(record)
    return out


def _write_run(folder: Path, model: str, annotations: str, method: str, records: list[dict]) -> Path:
    fmt, metric, _, _ = DATASETS[annotations]
    folder.mkdir(parents=True)
    config = {
        "model": {"name_or_path": model, "adapter": None, "dtype": "auto"},
        "data": {"format": fmt, "annotations": annotations, "metric": metric},
        "method": _method_config(method),
        "seed": 0,
    }
    (folder / "run_config.json").write_text(json.dumps(config))
    half = len(records) // 2
    for rank, part in enumerate((records[:half], records[half:])):
        (folder / f"predictions.rank{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, str, str], Path]:
    root = tmp_path_factory.mktemp("report_runs")
    made = {}
    for model in MODELS:
        for ann in DATASETS:
            for method in ("vanilla", "laser") + (("vicrop",) if model.endswith("a") else ()):
                records = _records(model, ann, method)
                if model.endswith("b") and method == "laser":
                    # 3 samples missing, 2 written twice (merge drops the copies), 1 error
                    records = records[3:] + records[3:5]
                    records[0] = {**records[0], "prediction": None, "path": None, "error": "OOM"}
                name = f"{model.split('/')[1]}_{Path(ann).parent.name}_{method}"
                made[(model, ann, method)] = _write_run(root / name, model, ann, method, records)
    return made


def _unique_records(folder: Path) -> dict[str, dict]:
    seen: dict[str, dict] = {}
    for path in sorted(folder.glob("predictions.rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seen.setdefault(record["sample_id"], record)
    return seen


def _correct(record: dict) -> float:
    return float(record["prediction"] is not None and record["prediction"] == record["answers"][0])


def _check_png(path: Path, min_side: int = 300) -> None:
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side and max(image.size) <= 4000, image.size


def test_compare_tables_match_the_prediction_files(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare_cmd.main([str(p) for p in runs.values()] + ["--out", str(out), "--n-boot", "200"]) == 0
    assert "## Scores" in capsys.readouterr().out
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(runs)
    by_run = {row["run"]: row for row in rows}
    for (model, ann, method), folder in runs.items():
        row = by_run[str(folder)]
        assert (row["model"], row["method"]) == (model.split("/")[1], method)
        records = _unique_records(folder)
        values = {i: _correct(r) for i, r in records.items()}
        assert int(row["n"]) == len(records)
        assert float(row["accuracy"]) == pytest.approx(np.mean(list(values.values())))
        assert float(row["ci_low"]) <= float(row["accuracy"]) <= float(row["ci_high"])
        if method == "vanilla":
            assert row["delta_vs_vanilla"] == "" and row["n_paired"] == ""
            continue
        baseline = {i: _correct(r) for i, r in _unique_records(runs[(model, ann, "vanilla")]).items()}
        shared = [i for i in values if i in baseline]
        assert int(row["n_paired"]) == len(shared)
        assert float(row["delta_vs_vanilla"]) == pytest.approx(
            np.mean([values[i] - baseline[i] for i in shared])
        )
        assert float(row["delta_ci_low"]) <= float(row["delta_vs_vanilla"]) <= float(row["delta_ci_high"])
        assert float(row["vanilla_accuracy"]) == pytest.approx(np.mean(list(baseline.values())))
    incomplete = by_run[str(runs[("org/model-b", "/data/shapes/questions.jsonl", "laser")])]
    assert (
        int(incomplete["n"]) == N - 3
        and int(incomplete["n_paired"]) == N - 3
        and int(incomplete["errors"]) == 1
    )
    markdown = (out / "scores.md").read_text()
    assert "| shapes/questions | model-a | laser | exact | 40 |" in markdown
    assert "## Summary" in markdown and "coco_pope_random" in markdown
    for name in ("vaq_per_layer.png", "chosen_layer.png", "paths.png"):
        _check_png(out / name)


def test_labels_stay_distinct_and_vanilla_only_runs_skip_layer_figures(runs, tmp_path):
    vanilla = [p for (_, _, m), p in runs.items() if m == "vanilla"]
    loaded = load_runs(vanilla + vanilla[:1])  # the same folder twice is read once
    assert len(loaded) == len(vanilla)
    assert len({(r.model, r.dataset) for r in loaded}) == len(loaded)
    result = compare_cmd.compare(vanilla, tmp_path / "v", n_boot=50)
    assert set(result["skipped"]) == {"vaq_per_layer.png", "chosen_layer.png"}
    _check_png(tmp_path / "v" / "paths.png", min_side=200)


def test_figure_titles_fit_in_the_figure(runs, tmp_path, monkeypatch):
    """One model and one dataset make the narrowest figures: no title may be cut off at their edges."""
    import matplotlib.pyplot as plt

    from laser.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    one = load_runs([p for (model, ann, _), p in runs.items() if model == "org/model-a" and "shapes" in ann])
    for draw in (figures.vaq_figure, figures.layer_figure, figures.path_figure):
        assert draw(one, tmp_path / "figure.png")
    for fig in drawn:
        renderer = fig.canvas.get_renderer()
        for text in [fig._suptitle, *(ax.title for ax in fig.axes)]:
            if text is not None and text.get_text():
                box = text.get_window_extent(renderer)
                assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text.get_text()
        plt.close(fig)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from run_fixtures import predict_args, save_tiny_llava, write_dataset

    from laser.cli import main as laser_main

    root = tmp_path_factory.mktemp("report_real")
    model = save_tiny_llava(root / "tiny-llava")
    annotations = write_dataset(root / "data", n=2)
    run = root / "run"
    args = predict_args(
        model, annotations, run, "data.batch_size=2", "method=laser_full", "method.decode.max_new_tokens=4"
    )
    assert laser_main(["predict", *args]) == 0
    return model, annotations, run


def test_show_reruns_a_run_sample_and_draws_it(real_run, capsys):
    model, annotations, run = real_run
    assert show_cmd.main([str(run), "s001"]) == 0
    printed = capsys.readouterr().out
    recorded = _unique_records(run)["s001"]["prediction"]
    assert f"laser_full: {recorded!r}" in printed  # same model, method and seed: same answer
    _check_png(run / "show" / "s001.png", min_side=500)


def test_show_one_off_image(real_run, tmp_path, capsys):
    model, annotations, _ = real_run
    out = tmp_path / "one.png"
    method = tmp_path / "short_laser.yaml"  # a method YAML file instead of a preset name
    method.write_text("name: short_laser\ndecode:\n  mode: auto\n  max_new_tokens: 4\n")
    image = annotations.parent / "images" / "img0.png"
    argv = [
        "--image",
        str(image),
        "--question",
        "What is the color ?",
        "--model",
        str(model),
        "--out",
        str(out),
    ]
    assert show_cmd.main(argv + ["--method", str(method), "--answers", "red"]) == 0
    assert "short_laser:" in capsys.readouterr().out
    _check_png(out, min_side=500)


def test_show_needs_a_sample_or_an_image(capsys):
    with pytest.raises(SystemExit):
        show_cmd.main(["--image", "x.png"])
    assert "--question" in capsys.readouterr().err


def test_processor_settings_make_another_model_with_its_own_vanilla(tmp_path):
    """The same weights at another resolution (`model.processor`) are compared as another model: their
    own label, and their laser run paired with their own vanilla run, not the default resolution's."""
    ann = "/data/shapes/questions.jsonl"
    folders = {}
    for hires in (False, True):
        for method in ("vanilla", "laser"):
            records = _records("org/model-a", ann, method)
            if hires and method == "vanilla":  # every answer right at the higher resolution
                records = [{**r, "prediction": r["answers"][0]} for r in records]
            folder = _write_run(tmp_path / f"{method}{'_hi' if hires else ''}", "org/model-a", ann, method, records)
            if hires:
                config = json.loads((folder / "run_config.json").read_text())
                config["model"]["processor"] = {"max_pixels": 16384}
                (folder / "run_config.json").write_text(json.dumps(config))
            folders[(hires, method)] = folder
    loaded = {run.path: run for run in load_runs(list(folders.values()))}
    assert loaded[folders[(False, "laser")]].model == "model-a"
    assert loaded[folders[(True, "laser")]].model == "model-a [max_pixels=16384]"
    assert {run.label for run in loaded.values()} == {"vanilla", "laser"}
    compare_cmd.compare(list(folders.values()), tmp_path / "cmp", n_boot=50)
    with (tmp_path / "cmp" / "scores.csv").open() as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert float(rows[str(folders[(True, "laser")])]["vanilla_accuracy"]) == 1.0
    assert float(rows[str(folders[(False, "laser")])]["vanilla_accuracy"]) == pytest.approx(ACCURACY["vanilla"], abs=0.2)
