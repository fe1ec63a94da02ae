"""Experiment trackers on `laser predict`: `trainer.logger=csv|tensorboard|wandb|mlflow`.

`make_logger(kind, output_dir, name)` builds Lightning's logger of that kind, writing under the run
folder: CSV and TensorBoard in `<output_dir>/logs/`, W&B in `<output_dir>/wandb/` (offline with
`WANDB_MODE=offline`), MLflow in `$MLFLOW_TRACKING_URI` or a file store `<output_dir>/mlruns/`
(`MLFLOW_ALLOW_FILE_STORE` is then set, which MLflow 3 asks for).

`BatchLogging` (a callback) logs, per predicted batch of rank 0: `batch/samples`, `batch/errors`,
`batch/retries` (samples answered again with vanilla decoding), `batch/seconds` and
`batch/samples_per_s`. `log_final(logger, output_dir)` logs, once the run is merged, the metrics of
`laser evaluate` (`final/accuracy`, one `final/<group>/<value>` per meta group, the decode paths'
counts, errors) and a table of samples (`samples.csv`: the first `SAMPLE_ROWS` records).
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
SAMPLE_ROWS = 100
"""Rows of the logged sample table."""
SAMPLE_COLUMNS = ("sample_id", "question", "answers", "prediction", "correct", "layer", "path", "error")


class LoggerUnavailable(ValueError):
    """`trainer.logger` names a tracker whose package is not installed."""


def _needs(kind: str, module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise LoggerUnavailable(
            f"trainer.logger={kind} needs the {package} package: pip install {package} "
            f"(or pip install 'laser-lvlm[loggers]')"
        )


def check_logger(kind: str | None) -> str | None:
    """The logger kind of `trainer.logger` (None: no logger), or an error naming the key when it is
    unknown or its package is missing; checked before the run touches its output folder."""
    if kind is None or str(kind).lower() in ("none", "false", ""):
        return None
    kind = str(kind).lower()
    if kind not in LOGGERS:
        raise ValueError(f"trainer.logger={kind!r} is not one of {' | '.join(LOGGERS)} (or null)")
    import importlib.util

    if kind == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        _needs(kind, "tensorboardX", "tensorboardX")
    elif kind in ("wandb", "mlflow"):
        _needs(kind, kind, "wandb" if kind == "wandb" else "mlflow-skinny")
    return kind


def make_logger(kind: str | None, output_dir: str | Path, name: str = "laser") -> Any:
    """Lightning's logger for `trainer.logger=kind` (None or "none": no logger -> False)."""
    kind = check_logger(kind)
    if kind is None:
        return False
    output_dir = Path(output_dir)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(output_dir), name="logs")
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(output_dir), name="logs")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(name=name, project=os.environ.get("WANDB_PROJECT", "laser"), save_dir=str(output_dir))
    from lightning.pytorch.loggers import MLFlowLogger

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # a file store in the run folder (MLflow 3 asks for this opt-in to use one)
        uri = (output_dir / "mlruns").resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "laser"), run_name=name,
                        tracking_uri=uri)


def batch_figures(records: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    """Throughput, error and retry counts of one predicted batch (its records)."""
    records = [r for r in records if r is not None]
    errors = sum(r.get("error") is not None for r in records)
    retries = sum("vanilla decoding" in str(r.get("fallback") or "") for r in records)
    return {
        "batch/samples": float(len(records)),
        "batch/errors": float(errors),
        "batch/retries": float(retries),
        "batch/seconds": round(seconds, 4),
        "batch/samples_per_s": round(len(records) / seconds, 4) if seconds > 0 else 0.0,
    }


class BatchLogging(Callback):
    """Logs `batch_figures` of every predicted batch to the Trainer's logger (rank 0's batches)."""

    def __init__(self) -> None:
        self._start = 0.0
        self._batches = 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._start = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.loggers or not isinstance(outputs, list):
            return
        figures = batch_figures(outputs, time.perf_counter() - self._start)
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=self._batches)
        self._batches += 1


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """`laser evaluate`'s result as flat numbers: accuracy, per-group accuracies, path counts, errors."""
    out: dict[str, float] = {}
    overall = result.get("overall") or {}
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        if overall.get(key) is not None:
            out[f"final/{key}"] = float(overall[key])
    out["final/samples"] = float(overall.get("n") or 0)
    for group, values in (result.get("groups") or {}).items():
        for value, s in values.items():
            if s.get("accuracy") is not None:
                out[f"final/{group}/{value}"] = float(s["accuracy"])
    for path, count in (result.get("paths") or {}).items():
        out[f"final/path/{path}"] = float(count)
    report = result.get("report") or {}
    out["final/errors"] = float(report.get("errors") or 0)
    return out


def sample_table(records: list[dict[str, Any]], metric: str, rows: int = SAMPLE_ROWS) -> list[list[Any]]:
    """The first `rows` records as table rows of `SAMPLE_COLUMNS` (`correct` scored with `metric`)."""
    from ..records.metrics import score

    table = []
    for r in records[:rows]:
        correct = score([r], metric, n_boot=1)["accuracy"] if r.get("answers") else None
        table.append([r.get("sample_id"), r.get("question"), " | ".join(map(str, r.get("answers") or [])),
                      r.get("prediction"), correct, r.get("layer"), r.get("path"), r.get("error")])
    return table


def _csv_text(table: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SAMPLE_COLUMNS)
    writer.writerows(table)
    return buffer.getvalue()


def log_final(logger: Any, output_dir: str | Path) -> dict[str, float]:
    """Log the merged run's `laser evaluate` metrics and its sample table to `logger`, then close it."""
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    from ..records.evaluate import evaluate
    from ..records.files import merge_records

    result = evaluate(output_dir)
    figures = final_metrics(result)
    if isinstance(logger, TensorBoardLogger):
        # Lightning closed the event writer when predict ended, and the next write opens a new file. Its
        # name (the time in whole seconds and the host) can be the first file's, which would be truncated
        # with the batch scalars in it: the final scalars go to a file of their own.
        writer = logger.experiment
        for attr in ("_filename_suffix", "filename_suffix"):  # tensorboardX's, torch.utils.tensorboard's
            if hasattr(writer, attr):
                setattr(writer, attr, ".final")
    logger.log_metrics(figures, step=0)
    records, _ = merge_records(output_dir)
    table = sample_table(records, result["metric"])
    text = _csv_text(table)
    if isinstance(logger, WandbLogger):
        logger.log_table("samples", columns=list(SAMPLE_COLUMNS), data=[[str(v) for v in row] for row in table])
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_text(logger.run_id, text, "samples.csv")
    elif isinstance(logger, TensorBoardLogger):
        lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
        lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in table]
        logger.experiment.add_text("samples", "\n".join(lines), 0)
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(logger.log_dir) / "samples.csv").write_text(text, encoding="utf-8")
    logger.save()
    logger.finalize("success")
    if isinstance(logger, WandbLogger):  # the W&B run ends with the run, not with the process
        logger.experiment.finish()
    return figures
