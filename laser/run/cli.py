"""The `laser` command: predict, evaluate, compare, show, list, demo.

A bad command prints one line `laser: error: ...` and exits with status 2 (no traceback; set
LASER_DEBUG=1 to see it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

USAGE = """laser <command> [args]        (laser --version)

  predict  key=value ...          run a method over a dataset (trainer.predict)
  evaluate <run_dir> [--by KEY]   merge ranks, check completeness, score -> metrics.json
  compare  <run_dir> ... [--out]  tables and figures across runs, models and datasets
  show     <run_dir> <sample_id>  one picture: heatmap, crop, mask, VAQ per layer, answers
  show     --image X --question Y one-off picture for any image
  list                            adapters, methods, datasets
  demo                            the testbed model on a subset of its split (< 5 min on CPU)
"""


def version_line() -> str:
    """`laser 0.2.0 (torch ..., transformers ..., lightning ...)`."""
    from .. import __version__

    return f"laser {__version__} (" + ", ".join(f"{k} {v}" for k, v in dependency_versions().items()) + ")"


def dependency_versions() -> dict[str, str]:
    """Installed versions of the packages a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "lightning"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _predict(argv: list[str]) -> int:
    from .compose import compose
    from .predict import is_launcher_rank, predict

    cfg = compose(argv)
    summary = predict(cfg)
    if is_launcher_rank() and "written" in summary:
        print(
            f"laser predict: {summary['written']}/{summary['expected']} samples in {summary['output_dir']} "
            f"({summary['pending']} predicted now, {summary['skipped']} already there, "
            f"{summary['errors']} errors, {summary['seconds']} s). Next: laser evaluate {summary['output_dir']}"
        )
    return 0


def _evaluate(argv: list[str]) -> int:
    from .evaluate import evaluate, format_table
    from .metrics import METRICS

    parser = argparse.ArgumentParser(prog="laser evaluate")
    parser.add_argument("run_dir")
    parser.add_argument("--metric", default=None, choices=list(METRICS))
    parser.add_argument("--by", action="append", default=None, help="group by a record field, e.g. meta.family")
    args = parser.parse_args(argv)
    result = evaluate(args.run_dir, args.metric, args.by)
    print(format_table(result))
    if not result["complete"]:
        missing = result["report"].get("missing")
        print(
            f"laser evaluate: incomplete run ({len(missing) if missing else 'unknown number of'} samples missing); "
            "run the same predict command again to finish it",
            file=sys.stderr,
        )
        return 1
    return 0


def _list(argv: list[str]) -> int:
    from ..adapters import get_adapter_class, list_adapters
    from ..method.config import list_presets
    from .compose import group_names

    print("adapters (name: Hugging Face classes served):")
    for name in list_adapters():
        cls = get_adapter_class(name)
        print(f"  {name:<16} {', '.join(cls.architectures)}")
    print("methods: " + ", ".join(list_presets()))
    print("datasets: " + ", ".join(group_names("data")))
    print("models: " + ", ".join(group_names("model")) + " (or any checkpoint folder)")
    return 0


def _compare(argv: list[str]) -> int:
    from ..report.compare import main as compare_main

    return compare_main(argv)


def _show(argv: list[str]) -> int:
    from ..report.show import main as show_main

    return show_main(argv)


def _demo(argv: list[str]) -> int:
    from .demo import main as demo_main

    return demo_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "predict": _predict,
    "evaluate": _evaluate,
    "compare": _compare,
    "show": _show,
    "list": _list,
    "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(version_line())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"laser: error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except KeyboardInterrupt:
        print("laser: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as err:  # a bad command: one line, no traceback
        if os.environ.get("LASER_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"laser: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
