"""The `laser` command: predict, evaluate, compare, show, list, demo.

A bad command prints one line `laser: error: ...` and exits with status 2 (no traceback; set
LASER_DEBUG=1 to see it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..run.versions import version_line

USAGE = """laser <command> [args]        (laser --version; laser <command> --help)

  predict  key=value ...          run a method over a dataset (trainer.predict); dry_run=true: plan only
  evaluate <run_dir> [--by KEY]   merge ranks, check completeness, score -> metrics.json
  compare  <run_dir> ... [--out]  tables and figures across runs, models and datasets
  show     <run_dir> <sample_id>  one picture: heatmap, crop, mask, VAQ per layer, answers
  show     --image X --question Y one-off picture for any image
  list                            adapters, methods, datasets
  demo                            the testbed model on a subset of its split (< 5 min on CPU)
"""


HELP_FLAGS = ("-h", "--help")


def _predict(argv: list[str]) -> int:
    from ..run.compose import ConfigError, compose

    if any(arg in HELP_FLAGS for arg in argv):
        from .predict_help import predict_help

        print(predict_help([arg for arg in argv if arg not in HELP_FLAGS]))
        return 0
    cfg = compose(argv)
    if cfg.get("dry_run"):
        from ..run.dry_run import dry_run, format_dry_run

        plan = dry_run(cfg)
        print(format_dry_run(plan))
        if plan["error"]:
            raise ConfigError(plan["error"])
        return 0
    from ..run.predict import is_launcher_rank, predict

    summary = predict(cfg)
    if is_launcher_rank() and "written" in summary:
        print(
            f"laser predict: {summary['written']}/{summary['expected']} samples in {summary['output_dir']} "
            f"({summary['pending']} predicted now, {summary['skipped']} already there, "
            f"{summary['errors']} errors, {summary['seconds']} s). Next: laser evaluate {summary['output_dir']}"
        )
    return 0


def _evaluate(argv: list[str]) -> int:
    from ..records.evaluate import evaluate, format_table
    from ..records.metrics import METRICS

    parser = argparse.ArgumentParser(
        prog="laser evaluate",
        description="Merge a run's rank files, check every sample is there once, score it and write metrics.json.",
    )
    parser.add_argument("run_dir", help="a run folder written by `laser predict`")
    parser.add_argument(
        "--metric", default=None, choices=list(METRICS), help="score with this metric (default: the data's)"
    )
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
    from ..run.compose import group_names

    argparse.ArgumentParser(
        prog="laser list",
        description="The registered adapters (with the Hugging Face classes each serves) and the method, "
        "dataset and model presets. Every key of `laser predict`: laser predict --help.",
    ).parse_args(argv)
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
    if argv[:1] == ["help"] and len(argv) > 1:  # `laser help predict`
        argv = [argv[1], "--help"]
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
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        raise
    except Exception as err:  # a bad command: one line, no traceback
        if os.environ.get("LASER_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"laser: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())

