"""The keys of `laser predict` besides `method.*`: one dataclass per group, each field with its help.

The same `option(default, doc)` fields as `LaserConfig` (laser/method/config.py), so one walk
(`config_keys`) serves validation (`compose.validate`), `laser predict --help` and the tests. A new
key is a new field here, with its one-line help; values still come from the YAML files under
configs/ and the command line. A default here is what applies when a preset leaves the key out.
A dict-valued field (e.g. `data.reader_options`) takes any sub-key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.formats import READERS
from ..method.config import LaserConfig, option
from ..records.metrics import METRICS


@dataclass
class ModelOptions:
    """The model: a preset under configs/model/, a checkpoint folder, hub id or adapter name."""

    name_or_path: str | None = option(None, "checkpoint folder or Hugging Face hub id (laser:<path> = in the package)")
    adapter: str | None = option(None, "adapter name; null: from config.json `architectures` (laser list)")
    dtype: str = option("auto", "auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16 | float16")
    attn_implementation: str | None = option(
        None, "attention kernel: sdpa | eager | flash_attention_2 | flash_attention_3 | flex_attention; null: the model's"
    )
    processor: dict[str, Any] = option(
        doc="processor options, passed to its from_pretrained (model.processor.max_pixels=1003520 for Qwen)", factory=dict
    )
    device_map: Any = option(
        None, "spread one model over a node's devices: auto | balanced | sequential | a device | {module: device}; "
        "then trainer.devices=1 (one process per node)"
    )
    max_memory: dict[str, Any] | None = option(None, "per-device budget for device_map, e.g. {0: 70GiB, cpu: 200GiB}")


@dataclass
class DataOptions:
    """The dataset: a preset under configs/data/; the arguments of `VQADataModule`."""

    format: str = option("jsonl", f"annotation format: {' | '.join(READERS)}")
    annotations: str | None = option(None, "annotations file (or the V* folder); laser:<path> = in the package")
    image_root: str | None = option(None, "folder image paths are relative to; null: the annotations' folder")
    batch_size: int = option(1, "samples per batch and device")
    num_workers: int = option(0, "DataLoader worker processes per device")
    limit: int | None = option(None, "keep the first N samples; null: all")
    on_error: str = option("raise", "a bad annotation entry: raise | skip (listed in annotation_errors.txt)")
    metric: str | None = option(None, f"{' | '.join(METRICS)}; null: the format's own")
    choice_mode: str = option(
        "generate",
        "multiple choice: generate: options in the prompt, the letter generated | likelihood: the bare "
        "question, options ranked by mean token log-likelihood (V*'s official evaluation)",
    )
    reader_options: dict[str, Any] | None = option(None, "extra keyword arguments of the format's reader")


@dataclass
class TrainerOptions:
    """Lightning's Trainer: a preset under configs/trainer/; a key left out takes Lightning's default."""

    accelerator: str = option("auto", "cpu | gpu | cuda | mps | auto")
    devices: Any = option("auto", "devices per node: a count, a list of ids, or auto")
    num_nodes: int = option(1, "machines; run the same command on each (MASTER_ADDR, NODE_RANK) or under srun")
    strategy: str = option("auto", "auto | ddp | ddp_spawn | ...; several devices take ddp")
    precision: str | None = option(None, "Lightning precision, e.g. bf16-mixed; null: 32-true (weights keep model.dtype)")
    enable_progress_bar: bool | None = option(None, "show the progress bar")
    limit_predict_batches: Any = option(None, "predict only this many batches (int) or fraction (float); null: all")
    logger: str | None = option(
        None, "experiment tracker: csv | tensorboard | wandb | mlflow, under output_dir (WANDB_MODE=offline, "
        "MLFLOW_TRACKING_URI work); per-batch throughput, errors, retries, then the final metrics; null: none"
    )


@dataclass
class RunOptions:
    """The run: the top-level keys of configs/predict.yaml (no group prefix)."""

    output_dir: str = option("runs/latest", "folder of run_config.json and predictions.rank*.jsonl")
    seed: int = option(0, "run seed; each sample's seed depends only on it and the sample_id")
    resume: bool = option(False, "continue a folder whose run_config.json differs (with a warning)")
    overwrite: bool = option(False, "delete the folder's predictions and start over")
    dry_run: bool = option(False, "compose, validate and report what would run; load and write nothing")
    wait: bool = option(False, "if another run holds output_dir, wait for it instead of stopping (exit 2)")
    claim_stale_after: float = option(
        120.0, "seconds without a heartbeat after which another host's claim on output_dir is taken over"
    )


GROUPS: dict[str, type] = {
    "model": ModelOptions,
    "data": DataOptions,
    "method": LaserConfig,
    "trainer": TrainerOptions,
}
"""Each `group=<preset>` of the command line and the dataclass its keys are the fields of."""
