"""The `laser` model of lmms-eval: any LASER preset on any adapter, batched, multi-process, resumable.

    pip install "laser-lvlm[lmms]"
    lmms-eval --model laser --model_args pretrained=llava-hf/llava-1.5-7b-hf,adapter=llava,method=laser \\
        --tasks textvqa_val,pope --batch_size 8 --output_path logs/
    accelerate launch --num_processes 8 -m lmms_eval --model laser ...     (one process per GPU)

lmms-eval finds the model through the `lmms_eval.models` entry point (`MANIFEST`); this module is only
imported by lmms-eval, never by the core. Model args (`--model_args k=v,...`):

- `pretrained`: a model preset (`testbed`, `llava`: configs/model/), a checkpoint folder or a hub id
  (with `adapter=`); `adapter`, `dtype` (auto | float32 | bfloat16 | float16), `attn_implementation`,
  `device_map` (one model over several devices: then one process per node), `max_memory.<device>=`,
  and `processor.<option>=` (e.g. Qwen's `processor.max_pixels`) go to the adapter's `from_pretrained`.
- `method`: a preset (configs/method/) or a method YAML file; any dotted key overrides it (`crop.ratio=0.4`).
- `seed`: each document's seed is `sample_seed(seed, "<task>/<split>/<doc_id>")`, as in `laser predict`.
- `batch_size` (or lmms-eval's `--batch_size`).
- `output_dir`: write each answer's record (layer, VAQ, box, path, timings) to
  `<output_dir>/predictions.rank<R>.jsonl` as it is made, and answer only the documents not there
  yet, so a killed run resumes (lmms-eval itself saves responses only at the end). `resume=true` /
  `overwrite=true` as in `laser predict` when the folder holds answers made with other settings.

Each request's text is the task's prompt without its trailing answer instruction ("Answer the
question using a single word or phrase."): the adapter adds its own, so it appears once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelManifest
except ModuleNotFoundError as err:  # pragma: no cover - only without the extra
    raise ModuleNotFoundError(
        f"laser.integrations.lmms_eval needs lmms-eval ({err}); install it with: pip install 'laser-lvlm[lmms]'"
    ) from err
from loguru import logger
from PIL import Image

from ..adapters import DEFAULT_INSTRUCTION
from ..loading import check_max_memory, load_engine, method_spec, model_spec, sample_seed
from ..method.config import LaserConfig
from ..run.answering import Answer, answer_samples, make_record

if TYPE_CHECKING:
    from ..method.engine import LaserEngine

MANIFEST = ModelManifest(model_id="laser", simple_class_path="laser.integrations.lmms_eval.LaserLMM")
"""The payload of the `lmms_eval.models` entry point `laser` (pyproject.toml)."""

LMMS_DEFAULT_INSTRUCTION = "Answer the question using a single word or phrase."
"""The `post_prompt` lmms-eval's default prompts (TextVQA, POPE, GQA, ...) append after a newline."""


def strip_instruction(context: str, instructions: Sequence[str]) -> str:
    """`context` without a trailing answer instruction (any of `instructions`), so that the adapter's own
    instruction is the only one in the prompt."""
    text = context.strip()
    for instruction in instructions:
        if instruction and text.endswith(instruction):
            return text[: -len(instruction)].rstrip()
    return text


def apply_until(text: str, until: Sequence[str] | None) -> str:
    """`text` cut at the first of the stop strings `until` (lmms-eval's `until`)."""
    for stop in until or ():
        if stop:
            text = text.split(stop, 1)[0]
    return text


def decode_settings(gen_kwargs: dict[str, Any] | None, task: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A task's `generation_kwargs` as `decode.*` overrides plus its stop strings.

    `max_new_tokens` (or `max_gen_toks`), `temperature` (0: greedy, > 0: sampling at that temperature),
    `do_sample`, `top_p` and `top_k` override the method's `decode` settings; `until` is applied to the
    answer. Beam search has no contrastive counterpart, so `num_beams` > 1 is an error.
    """
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None)
    until = (until,) if isinstance(until, str) else tuple(until or ())
    beams = kwargs.get("num_beams")
    if beams is not None and int(beams) > 1:
        raise ValueError(
            f"task {task!r} asks for num_beams={beams}; LASER decodes token by token (greedy or sampling), "
            "so pass --gen_kwargs num_beams=1"
        )
    decode: dict[str, Any] = {}
    tokens = kwargs.get("max_new_tokens", kwargs.get("max_gen_toks"))
    if tokens is not None:
        decode["max_new_tokens"] = int(tokens)
    if kwargs.get("do_sample") is not None:
        decode["do_sample"] = bool(kwargs["do_sample"])
    if kwargs.get("temperature") is not None:
        temperature = float(kwargs["temperature"])
        decode["do_sample"] = temperature > 0
        if temperature > 0:
            decode["temperature"] = temperature
    if kwargs.get("top_p") is not None:
        decode["top_p"] = float(kwargs["top_p"])
    if kwargs.get("top_k") is not None:
        decode["top_k"] = int(kwargs["top_k"])
    return decode, until


@dataclass(frozen=True)
class ModelArgs:
    """The laser model's `--model_args` (module docstring): the named keys, `processor.<option>`,
    `max_memory.<device>`, and dotted method overrides (`crop.ratio=0.4`)."""

    pretrained: str = "testbed"
    method: str = "laser"
    adapter: str | None = None
    dtype: str | None = None
    seed: int = 0
    batch_size: int | str = 1
    device: str | None = None
    device_map: str | None = None
    attn_implementation: str | None = None
    output_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    max_batch_size: int | None = None
    processor: dict[str, Any] = field(default_factory=dict)
    max_memory: dict[Any, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, args: dict[str, Any]) -> ModelArgs:
        """Split lmms-eval's keyword arguments into the named keys and the dotted groups; an unknown plain
        key is an error that lists the valid ones."""
        named = {f.name for f in fields(cls)} - {"processor", "max_memory", "overrides"}
        unknown = sorted(k for k in args if "." not in k and k not in named)
        if unknown:
            raise ValueError(
                f"unknown laser model arg {unknown[0]!r}; expected pretrained, method, adapter, dtype, seed, "
                "batch_size, device_map, attn_implementation, processor.<option>, max_memory.<device>, "
                "output_dir, resume, overwrite or a dotted method override such as crop.ratio=0.4"
            )
        dotted = {k: v for k, v in args.items() if "." in k}
        processor = {k.split(".", 1)[1]: v for k, v in dotted.items() if k.startswith("processor.")}
        max_memory = {
            int(k.split(".", 1)[1]) if k.split(".", 1)[1].isdigit() else k.split(".", 1)[1]: v
            for k, v in dotted.items()
            if k.startswith("max_memory.")
        }
        overrides = {k: v for k, v in dotted.items() if not k.startswith(("processor.", "max_memory."))}
        plain = {k: v for k, v in args.items() if "." not in k}
        return cls(**plain, processor=processor, max_memory=max_memory, overrides=overrides)


class LaserLMM(lmms):
    """LASER as an lmms-eval "simple" model: `generate_until` only (see the module docstring)."""

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        """`model_args`: the keys of `ModelArgs`, as lmms-eval passes `--model_args k=v,...`."""
        super().__init__()
        import torch
        from accelerate import Accelerator

        args = ModelArgs.parse(model_args)
        if str(args.batch_size).startswith("auto"):
            raise ValueError("--batch_size auto is not supported by the laser model; give a number")
        self.batch_size_per_process = int(args.batch_size)
        if self.batch_size_per_process < 1:
            raise ValueError(f"batch_size={args.batch_size}; expected >= 1")
        self.seed = int(args.seed)
        self.method = method_spec(str(args.method), args.overrides)
        self.model_config = model_spec(str(args.pretrained), args.adapter, args.dtype)
        if args.processor:
            self.model_config["processor"] = dict(args.processor)
        device, device_map, max_memory = args.device, args.device_map, dict(args.max_memory)

        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if device_map is not None and per_node > 1:
            raise ValueError(
                f"device_map={device_map} spreads one model over this node's devices, so run one process per "
                f"node (got {per_node})"
            )
        if device_map is not None:
            self._device = None
        elif self._world_size > 1:
            self._device = self.accelerator.device
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        if args.attn_implementation:
            self.model_config["attn_implementation"] = args.attn_implementation
        check_max_memory(max_memory or None, device_map, ("max_memory.<device>=", "device_map="))
        # where the weights live: not part of the run config
        load = {"device_map": device_map, "max_memory": max_memory} if device_map is not None else {}
        self.engine = load_engine(self.model_config, self.method, device=self._device, load=load)
        lvlm = self.engine.adapter
        if self._device is None:
            self._device = lvlm.device
        self.instructions = tuple(dict.fromkeys((lvlm.instruction, LMMS_DEFAULT_INSTRUCTION, DEFAULT_INSTRUCTION)))

        self.output_dir = Path(args.output_dir) if args.output_dir else None
        if self.output_dir is not None:
            self._settle_output_dir(bool(args.resume), bool(args.overwrite))

    # ----------------------------------------------------------------- what lmms-eval reads
    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_process

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        """As lmms-eval's, except that a `batch_size` in `--model_args` wins over `--batch_size` (lmms-eval
        passes both as keywords, a TypeError)."""
        from lmms_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    # ----------------------------------------------------------------- output folder
    def run_config(self) -> dict[str, Any]:
        """What defines this model's answers (stored as run_config.json in `output_dir`)."""
        return {"model": dict(self.model_config), "method": self.method.to_dict(), "seed": self.seed}

    def _settle_output_dir(self, resume: bool, overwrite: bool) -> None:
        """Rank 0 writes run_config.json (refusing a folder of other settings, unless `resume` /
        `overwrite`); the others wait for it, and every rank raises the same error."""
        from ..records.files import output_mode, write_run_config

        mode = output_mode(resume, overwrite)
        error = None
        if self._rank == 0:
            try:
                write_run_config(self.output_dir, self.run_config(), mode)
            except ValueError as err:
                error = str(err)
        if self._world_size > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error], from_process=0)[0]
        if error is not None:
            raise ValueError(error)

    def _answered(self) -> dict[str, dict[str, Any]]:
        """Records already in `output_dir`, by sample id (a record marked `retryable` is not done)."""
        from ..records.files import merge_records

        if self.output_dir is None:
            return {}
        records, _ = merge_records(self.output_dir)
        return {r["sample_id"]: r for r in records if not r.get("retryable")}

    # ----------------------------------------------------------------- requests
    def generate_until(self, requests) -> list[str]:
        """One answer per request, in request order; see the module docstring."""
        from tqdm import tqdm

        from ..records.files import RecordFile

        items = []  # (sample id, context, doc_to_visual, task, split, doc_id, group key)
        groups: dict[tuple, dict[str, Any]] = {}
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            decode, until = decode_settings(gen_kwargs, task)
            key = (tuple(sorted(decode.items())), until)
            groups.setdefault(key, {"decode": decode, "until": until, "ids": []})
            items.append((f"{task}/{split}/{doc_id}", context, doc_to_visual, task, split, doc_id, key))

        done = self._answered()
        records: dict[str, dict[str, Any]] = {}
        pending: dict[str, tuple] = {}
        for item in items:
            sample_id, key = item[0], item[-1]
            if sample_id in done:
                records[sample_id] = done[sample_id]
            elif sample_id not in pending:
                pending[sample_id] = item
                groups[key]["ids"].append(sample_id)
        if self.output_dir is not None and done:
            logger.info(
                f"laser: rank {self._rank}: {len(records)} of {len(set(i[0] for i in items))} documents already "
                f"answered in {self.output_dir}; answering {len(pending)}"
            )

        out_file = RecordFile(self.output_dir, self._rank) if self.output_dir is not None else None
        bar = tqdm(total=len(pending), disable=self._rank != 0, desc="LASER answering")
        try:
            for group in groups.values():
                engine = self.engine.with_config(_with_decode(self.engine.config, group["decode"]))
                ids = group["ids"]
                for start in range(0, len(ids), self.batch_size_per_process):
                    batch = [pending[i] for i in ids[start : start + self.batch_size_per_process]]
                    made = self._answer(engine, batch)
                    if out_file is not None:
                        out_file.append(made)
                    records.update((r["sample_id"], r) for r in made)
                    bar.update(len(batch))
        finally:
            bar.close()
            if out_file is not None:
                out_file.close()

        responses = []
        for sample_id, *_, key in items:
            record = records[sample_id]
            if record.get("error"):
                logger.warning(f"laser: {sample_id}: {record['error']}")
            responses.append(apply_until(record.get("prediction") or "", groups[key]["until"]))
        return responses

    def _answer(self, engine: LaserEngine, batch: list[tuple]) -> list[dict[str, Any]]:
        """Records for a batch of pending items, answered by `engine` (the method with the request's
        generation arguments): documents without exactly one image fail alone."""
        samples, inputs, answers = [], [], []
        for sample_id, context, doc_to_visual, task, split, doc_id, _ in batch:
            question = strip_instruction(context, self.instructions)
            samples.append(
                {"sample_id": sample_id, "question": question, "meta": {"task": task, "split": split, "doc_id": doc_id}}
            )
            try:
                image = self._image(doc_to_visual, task, split, doc_id)
            except Exception as err:
                answers.append(Answer(None, f"{type(err).__name__}: {err}"))
                continue
            answers.append(None)
            inputs.append((len(answers) - 1, image, question, sample_seed(self.seed, sample_id)))
        if inputs:
            positions, images, questions, seeds = zip(*inputs)
            for position, answer in zip(positions, answer_samples(engine, images, questions, seeds)):
                answers[position] = answer
        return [make_record(s, a.prediction, a.error, a.retryable) for s, a in zip(samples, answers)]

    def _image(self, doc_to_visual, task: str, split: str, doc_id: int) -> Image.Image:
        """The document's one image; a clear error for none, several, or a video."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [visuals] if isinstance(visuals, Image.Image) else list(visuals or [])
        if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
            kinds = ", ".join(sorted({type(v).__name__ for v in visuals})) or "nothing"
            raise ValueError(
                f"{task}/{split}/{doc_id} has {len(visuals)} visual inputs ({kinds}); LASER localises in one "
                "image per question, so it answers single-image documents only"
            )
        return visuals[0]

    # ----------------------------------------------------------------- not supported
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "the laser model does not score continuations (loglikelihood, used by multiple_choice tasks): "
            "LASER changes how answers are generated, so run tasks with output_type generate_until "
            "(e.g. textvqa_val, pope, gqa)"
        )

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            "the laser model answers one question per image (generate_until); multi-round tasks are not "
            "supported, so run tasks with output_type generate_until (e.g. textvqa_val, pope, gqa)"
        )


def _with_decode(config: LaserConfig, decode: dict[str, Any]) -> LaserConfig:
    """`config` with the given `decode.*` values (the same object when there are none)."""
    if not decode:
        return config
    return config.replace(**{f"decode.{key}": value for key, value in decode.items()})
