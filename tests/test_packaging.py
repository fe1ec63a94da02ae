"""The package as users get it: a wheel with one import name, and imports that run one way only."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"laser": ROOT / "laser", "laser.adapters": ROOT / "adapters"}

# the level of each layer: a module may import its own layer and the layers below it, never one above, so
# the layers cannot import each other in a cycle. Every layer has a level of its own (two layers on one
# level could import each other). Bottom to top: the private names of transformers and open_clip (`compat`), where configs and assets are (`paths`), the adapter
# contract, the method core, loading a model and a method into an engine (`loading`), reading data sets
# (`data`), prediction records, metrics and evaluation (`records`); above them the shipped benchmark
# (`testbed`), running over data sets (`run`: compose, the Lightning layer, predict), reporting on runs
# (`report`), LASER inside other tools (`integrations`: lmms-eval), and the `laser` command on top (`cli`).
LAYERS = {
    "laser.compat": 0,  # the private names of transformers / open_clip (laser/compat.py), under everything
    "laser.paths": 1,
    "laser.adapters": 2,
    "laser.method": 3,
    "laser.loading": 4,
    "laser.data": 5,
    "laser.records": 6,
    "laser.testbed": 7,
    "laser.run": 8,
    "laser.report": 9,
    "laser.integrations": 10,
    "laser.cli": 11,
}
FACADE = {"laser", "laser.__main__"}
"""The package root (re-exports of the layers, `python -m laser`): in no layer, imported by none."""


def layer_of(module: str) -> str | None:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def package_modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name (`laser.adapters` from `adapters/`)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "laser" and parts and parts[0] == "adapters":
                continue
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [alias.name for alias in node.names], node.lineno))
    return out


def parent_package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def layer_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Which layers each layer imports (itself left out)."""
    graph: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for module, path in modules.items():
        own = layer_of(module)
        for target, _, _ in imports_of(module, path):
            other = layer_of(target)
            if own and other and other != own:
                graph[own].add(other)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (as [a, b, ..., a]), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_layer_has_its_own_level_and_every_module_a_layer():
    assert len(set(LAYERS.values())) == len(LAYERS), "two layers share a level: they could import each other"
    homeless = [m for m in package_modules() if m not in FACADE and layer_of(m) is None]
    assert not homeless, f"modules in no layer of LAYERS: {homeless}"


def test_imports_run_one_way_and_no_private_names_cross_packages():
    modules = package_modules()
    assert "laser.method.engine" in modules and "laser.adapters.base" in modules
    backwards, private, stray = [], [], []
    for module, path in modules.items():
        own_layer = layer_of(module)
        own_package = parent_package(module, path)
        for target, names, line in imports_of(module, path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.split(".")[0] == "adapters":
                stray.append(f"{where} imports top-level `adapters` (it is `laser.adapters`)")
            target_layer = layer_of(target)
            if target in FACADE and module not in FACADE and names != ["__version__"]:
                backwards.append(f"{where}: {module} imports the package root {target} (import the layer)")
            if own_layer and target_layer and LAYERS[target_layer] > LAYERS[own_layer]:
                backwards.append(f"{where}: {module} ({own_layer}) imports {target} ({target_layer})")
            if not target.startswith("laser"):
                continue
            target_is_module = target in modules and modules[target].name != "__init__.py"
            target_package = target.rsplit(".", 1)[0] if target_is_module else target
            if target_package == own_package:
                continue
            hidden = [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
            hidden += [n for n in names if n.startswith("_") and not n.startswith("__")]
            if hidden:
                private.append(f"{where}: {module} takes private {hidden} from {target}")
    assert not stray, "\n".join(stray)
    order = " -> ".join(sorted(LAYERS, key=LAYERS.get, reverse=True))
    assert not backwards, f"imports must run {order}:\n" + "\n".join(backwards)
    assert not private, "promote what is shared instead of importing private names:\n" + "\n".join(private)
    cycle = find_cycle(layer_graph(modules))
    assert cycle is None, "layers import each other in a cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_a_backward_and_a_private_import(tmp_path):
    """The walker above would catch the two faults it is for (guards against a checker that sees nothing)."""
    bad = tmp_path / "engine.py"
    bad.write_text("from ..run.writer import x\nfrom ..adapters._registry import _ADAPTERS\n")
    found = imports_of("laser.method.engine", bad)
    assert ("laser.run.writer", ["x"], 1) in found
    assert ("laser.adapters._registry", ["_ADAPTERS"], 2) in found
    assert layer_of("laser.run.writer") == "laser.run" and layer_of("laser.method.engine") == "laser.method"
    assert LAYERS["laser.run"] > LAYERS["laser.method"]


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"laser.run": {"laser.report"}, "laser.report": {"laser.run"}}) is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy of the tracked files: setuptools writes build/ into the source tree, and a stale
    # build/ would leak deleted modules into the wheel
    source = out / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("laser_lvlm-*.whl")
    return path


def test_wheel_installs_one_import_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"laser"}
    assert "laser/configs/method/laser.yaml" in names
    assert "laser/adapters/base.py" in names
    assert "laser/assets/testbed/model/model.safetensors" in names
    assert "laser/integrations/lmms_eval.py" in names  # lmms-eval finds the `laser` model by its entry point
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "laser = laser.integrations.lmms_eval:MANIFEST" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not [n for n in names if n.startswith(("tools/", "tests/", "laser/testbed/model", "laser/testbed/data"))]


CHECK_INSTALLED = r"""
import json, sys
from pathlib import Path
import laser
from laser import LaserConfig, LaserEngine, list_presets
from laser.adapters import create_adapter
from laser.paths import assets_dir
from PIL import Image

assert Path(laser.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), laser.__file__
presets = {name: LaserConfig.preset(name).to_dict() for name in list_presets()}
model = assets_dir() / "testbed" / "model"
adapter = create_adapter(str(model))
record = json.loads((assets_dir() / "testbed" / "eval.jsonl").read_text().splitlines()[0])
image = Image.open(assets_dir() / "testbed" / record["image"]).convert("RGB")
pred = LaserEngine(adapter, LaserConfig.preset("laser")).answer(image, record["question"])
print(json.dumps({"presets": sorted(presets), "adapter": adapter.name, "answer": pred.answer,
                  "layer": pred.layer, "file": laser.__file__}))
"""


def test_wheel_works_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LASER_CONFIG_DIR", None)
    run = subprocess.run(
        [sys.executable, "-c", CHECK_INSTALLED, str(site)], cwd=outside, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    expected = sorted(p.stem for p in (ROOT / "configs" / "method").glob("*.yaml"))
    assert result["presets"] == expected and "laser" in expected
    assert result["adapter"] == "llava" and isinstance(result["answer"], str) and result["answer"]
    listed = subprocess.run(
        [sys.executable, "-m", "laser", "list"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "llava" in listed.stdout and "methods: " + ", ".join(expected) in listed.stdout
    version = subprocess.run(
        [sys.executable, "-m", "laser", "--version"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert version.stdout.startswith("laser 0.") and "torch" in version.stdout
