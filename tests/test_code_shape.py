"""The shape of the package's code: no function of `laser/` or `adapters/` takes more than 6 parameters
besides `self` / `cls` (`*args` and `**kwargs` count one each); several settings travel as one object."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_PARAMETERS = 6


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (args.vararg is not None) + (args.kwarg is not None)


def long_signatures(source: str) -> list[tuple[str, int, int]]:
    tree = ast.parse(source)
    return [
        (node.name, node.lineno, parameter_count(node))
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > MAX_PARAMETERS
    ]


def test_the_count_reads_signatures_as_written():
    source = "def f(a, b, c, d, e, f, g): ...\nclass C:\n    def m(self, a, b, c, d, e, *args, **kw): ...\n"
    assert long_signatures(source) == [("f", 1, 7), ("m", 3, 7)]
    assert long_signatures("def ok(self, a, b, c, d, e, f): ...\n") == []


def test_no_function_takes_more_than_six_parameters():
    found = []
    for folder in ("laser", "adapters"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name, line, count in long_signatures(path.read_text(encoding="utf-8")):
                found.append(f"{path.relative_to(ROOT)}:{line} {name} takes {count}")
    assert not found, "\n".join(found)
