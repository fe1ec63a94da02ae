"""`LaserEngine`: VAQ layer selection, Con-ViCrop and VAT decoding on any registered adapter."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import BatchFeature

from ..adapters.base import VisionLanguageAdapter
from . import vaq as vaq_ops
from .attention import AttentionRows, capture_attention, model_tensors
from .canvas import canvas_shape, cell_masses, paint_map, placed_layout
from .config import LaserConfig
from .crop import PixelBox, high_res_tiles, place_crop, place_multiscale_crop, search_grid
from .decoding import generate
from .images import to_rgb
from .prediction import Prediction
from .preprocessing import ImageFeatures, ImagePreprocessor, processing_once
from .probe import AttentionProbe
from .scoring import OptionScores, continuation_log_probs, option_token_ids
from .seeding import content_seed
from .views import crop_view, diffusion_noise_inputs, fill_cells, ranked_cells, stack_streams, take_samples


@dataclass
class Localisation:
    """Per-sample outcome of layer selection: l*, VAQ[l] and the map painted on the original."""

    layer: int
    vaq: list[float]
    heatmap: torch.Tensor  # [h, w] density over the original image (`Prediction.heatmap`)
    box: tuple[int, int, int, int] | None


FULL_REGION = (0.0, 0.0, 1.0, 1.0)


@dataclass
class SamplePlan:
    """One sample's way through the engine, filled in stage by stage.

    Given: `index` (position in the batch, for error messages), `image`, `question`, `seed` (its random
    stream). Localisation: `localisation` (None without it, or after a fallback). Views: `views`, the
    focused images it is answered on (the crop, or original + crop), `regions`, the part of the original
    each view shows as fractions (x0, y0, x1, y1), and `path` ("direct", "contrastive" or "vanilla").
    Decoding: `masked_cells` (the cells of the negative view, LASER's masked view only) and `fallback`
    (why the sample fell back to a simpler path, if it did).
    """

    index: int
    image: Image.Image
    question: str
    seed: int
    localisation: Localisation | None = None
    fallback: str | None = None
    views: list[Image.Image] = field(default_factory=list)
    regions: list[tuple[float, float, float, float]] = field(default_factory=list)
    path: str = "direct"
    masked_cells: list | None = None

    def fall_back(self, reason: str | None) -> None:
        """Keep the first fallback reason."""
        self.fallback = self.fallback or reason


def device_synchroniser(device: torch.device):
    """A function that waits for `device`'s queued work (`torch.cuda.synchronize` and the like; nothing
    on the CPU), so that a clock read after it counts that work."""
    device = torch.device(device)
    sync = getattr(getattr(torch, device.type, None), "synchronize", None)
    if sync is None or device.type == "cpu":
        return lambda: None
    if device.type == "cuda":
        return lambda: sync(device)
    return sync  # mps and the like: their one (current) device


class StageTimer:
    """Wall seconds per stage; the device is synchronised before each clock read, so an asynchronous
    accelerator's work is counted in the stage that queued it."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = device_synchroniser(torch.device(device))

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.seconds[name] += self.now() - start


class LaserEngine:
    """Runs one method (a `LaserConfig`) with one adapter.

    `answer(image, question)` and `answer_batch(images, questions)` return `Prediction`s; a batch
    goes through each stage as one padded batch and equals answering one by one.
    """

    def __init__(self, adapter: VisionLanguageAdapter, config: LaserConfig | None = None):
        self.adapter = adapter
        self.config = config if config is not None else LaserConfig()
        self.config.validate()
        if self.config.counterfactual.view == "mask" and self._may_contrast() and not self.config.localize:
            raise ValueError("counterfactual.view=mask needs localize=true (the mask comes from the map)")
        self.probe = AttentionProbe(adapter.attention_modules()).install()

    def with_config(self, config: LaserConfig) -> LaserEngine:
        """An engine running `config` with this engine's adapter and attention probe (this one is unchanged)."""
        derived = LaserEngine.__new__(LaserEngine)
        derived.adapter, derived.config, derived.probe = self.adapter, config, self.probe
        config.validate()
        return derived

    def _may_contrast(self) -> bool:
        return self.config.decode.mode in ("contrastive", "auto")

    # ----------------------------------------------------------------- public API
    def answer(self, image: Image.Image, question: str, seed: int | None = None) -> Prediction:
        return self.answer_batch([image], [question], None if seed is None else [seed])[0]

    def image_preprocessor(self) -> ImagePreprocessor | None:
        """The image processor's work for one image, as `answer_batch` would do it, packaged to run in
        DataLoader workers (pass the results as `answer_batch(..., features=...)`); None if the
        adapter's processor has no separate image processor. Learned from one call on a small image."""
        with processing_once(self.adapter.processor) as memo:
            if memo is None:
                return None
            self.adapter.build_inputs([Image.new("RGB", (64, 64), (127, 127, 127))], ["?"])
            call = memo.last_call
        return ImagePreprocessor(memo.inner, call) if call is not None else None

    @contextmanager
    def _preprocessed(self, images, plans: list[SamplePlan], features) -> Iterator[None]:
        """Within the block every distinct image goes through the image processor once; `features`
        (from `image_preprocessor()`, per image) stand for the processing of the images they were made of."""
        with processing_once(self.adapter.processor) as memo:
            if memo is not None and features is not None:
                for original, plan, feats in zip(images, plans, features):
                    image = plan.image
                    if feats is not None and image is original:  # features of this very image
                        memo.add(image, feats.call, feats.features)
            yield

    @torch.inference_mode()
    def answer_batch(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        seeds: Sequence[int] | None = None,
        features: Sequence[ImageFeatures | None] | None = None,
    ) -> list[Prediction]:
        """Answers for a batch; `seeds` (one per sample) drive sampling and random views. Without them
        each sample's seed comes from `config.seed` and the sample itself (`seeding.content_seed`: its
        pixels and question), so a sample's answer does not depend on its batch or its position in it,
        and different samples get independent streams. `features` are the images'
        preprocessed features from `image_preprocessor()` (computed in DataLoader workers), if any.

        Every distinct image (original, crop) goes through the image processor once; the negative views
        are made on the processed pixel tensors."""
        if len(images) != len(questions):
            raise ValueError(f"answer_batch: {len(images)} images for {len(questions)} questions")
        if not len(images):
            return []
        plans = self._plans(images, questions, seeds)
        timer = StageTimer(self.adapter.device)
        start = timer.now()
        with self._preprocessed(images, plans, features):
            self._prepare(plans, timer)
            with timer.stage("decode"):
                answers = self._decode(plans)
        per_sample = self._per_sample(timer, start, len(plans))
        return [
            Prediction(answer=text, token_ids=ids, **self._outcome(plan, per_sample))
            for plan, (ids, text) in zip(plans, answers)
        ]

    @torch.inference_mode()
    def score_options(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        options: Sequence[Sequence[str]],
        seeds: Sequence[int] | None = None,
        features: Sequence[ImageFeatures | None] | None = None,
    ) -> list[OptionScores]:
        """Rank each sample's `options` as the reply to its question, instead of generating one
        (docs/method.md, "Option scoring"): the method's stages up to its focused view as for
        `answer_batch`, then each option's mean token log-likelihood on that view (on the contrastive
        path under the VAT scores). `choice` is the index of the highest score (the first on a tie).
        A batch equals scoring one by one; `seeds` and `features` as for `answer_batch`."""
        if not len(images) == len(questions) == len(options):
            raise ValueError(
                f"score_options: {len(images)} images, {len(questions)} questions, {len(options)} option lists"
            )
        if not len(images):
            return []
        options = [list(opts) if not isinstance(opts, str) else [opts] for opts in options]
        for i, opts in enumerate(options):
            if len(opts) < 2:
                raise ValueError(f"options[{i}] has {len(opts)} option(s); expected at least 2")
        continuations = [option_token_ids(self.adapter.tokenizer, opts, i) for i, opts in enumerate(options)]
        plans = self._plans(images, questions, seeds)
        timer = StageTimer(self.adapter.device)
        start = timer.now()
        with self._preprocessed(images, plans, features):
            self._prepare(plans, timer)
            with timer.stage("score"):
                scored = self._score(plans, continuations)
        per_sample = self._per_sample(timer, start, len(plans))
        out = []
        for plan, log_probs, opts in zip(plans, scored, options):
            means = [sum(lp) / len(lp) for lp in log_probs]
            ranked = [m if m == m else float("-inf") for m in means]  # NaN ranks last
            choice = max(range(len(means)), key=lambda k: (ranked[k], -k))
            out.append(
                OptionScores(
                    answer=opts[choice],
                    **self._outcome(plan, per_sample),
                    choice=choice,
                    scores=means,
                    num_tokens=[len(lp) for lp in log_probs],
                )
            )
        return out

    def _plans(self, images, questions, seeds: Sequence[int] | None) -> list[SamplePlan]:
        """One checked plan per sample: RGB image, stripped question, seed (given, or from the content)."""
        converted = [to_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        questions = [self._check_question(q, i) for i, q in enumerate(questions)]
        if seeds is None:
            seeds = [content_seed(self.config.seed, im, q) for im, q in zip(converted, questions)]
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(converted):
            raise ValueError(f"seeds: {len(seeds)} seeds for {len(converted)} samples")
        return [SamplePlan(i, im, q, s) for i, (im, q, s) in enumerate(zip(converted, questions, seeds))]

    @staticmethod
    def _per_sample(timer: StageTimer, start: float, n: int) -> dict[str, float]:
        """Seconds per stage and in total, divided over the batch's `n` samples."""
        total = timer.now() - start
        per_sample = {k: v / n for k, v in timer.seconds.items()}
        per_sample["total"] = total / n
        return per_sample

    def _outcome(self, plan: SamplePlan, per_sample: dict[str, float]) -> dict:
        """The `Prediction` fields every answer shares: layer, VAQ, box, path, timings, fallback, map."""
        loc = plan.localisation
        return {
            "layer": loc.layer if loc else None,
            "vaq": loc.vaq if loc else None,
            "box": list(loc.box) if loc and loc.box and plan.path != "vanilla" else None,
            "path": plan.path,
            "timings": dict(per_sample),
            "method": self.config.name,
            "fallback": plan.fallback,
            "heatmap": loc.heatmap if loc is not None and self.config.save_heatmap else None,
            "masked_cells": plan.masked_cells,
        }

    # ----------------------------------------------------------------- stages
    def _prepare(self, plans: list[SamplePlan], timer: StageTimer) -> None:
        """The stages before decoding: each plan's localisation (or fallback), views, regions and path."""
        if self.config.localize:
            images = [plan.image for plan in plans]
            with timer.stage("attention"):
                tiles = [self._tiles(image) for image in images]
                rows = self._attend(images, [plan.question for plan in plans], tiles)
            with timer.stage("localise"):
                localisations, fallbacks = self._localise(rows, images, tiles)
                del rows
            for plan, loc, reason in zip(plans, localisations, fallbacks):
                plan.localisation = loc
                plan.fall_back(reason)
        with timer.stage("views"):
            for plan in plans:
                self._focus(plan)

    def _check_question(self, question: str, index: int) -> str:
        if not isinstance(question, str):
            raise TypeError(f"questions[{index}] must be a string, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise ValueError(f"questions[{index}] is empty")
        return question

    def _check_context(self, inputs, indices: list[int] | None = None, new_tokens: list[int] | None = None) -> None:
        """Raise if a row's prompt plus `decode.max_new_tokens` (or the row's `new_tokens`, e.g. an option's
        length) exceeds the LM's `max_position_embeddings` (a model silently degrades past its context
        instead of failing)."""
        limit = getattr(self.adapter.language_config(), "max_position_embeddings", None)
        mask = inputs.get("attention_mask")
        if not isinstance(limit, int) or limit <= 0 or mask is None:
            return
        lengths = mask.reshape(mask.shape[0], -1).sum(dim=-1).tolist()
        for row, length in enumerate(lengths):
            new = self.config.decode.max_new_tokens if new_tokens is None else new_tokens[row]
            if length + new > limit:
                i = indices[row] if indices is not None else row
                what = "decode.max_new_tokens" if new_tokens is None else "the option's tokens"
                raise ValueError(
                    f"questions[{i}]: prompt of {int(length)} tokens + {what}={new} exceeds the "
                    f"language model's max_position_embeddings={limit}; shorten the question"
                    + (" or lower decode.max_new_tokens" if new_tokens is None else " or the option")
                )

    def _tiles(self, image: Image.Image) -> list[PixelBox]:
        """The parts of `image` the attention passes look at: the whole image, or ViCrop's high-resolution
        tiles (`vaq.tile_size`)."""
        size = self.config.vaq.tile_size
        return [(0, 0, image.width, image.height)] if size is None else high_res_tiles(image.size, size)

    def _attend(
        self, images: list[Image.Image], questions: list[str], tiles: list[list[PixelBox]] | None = None
    ) -> AttentionRows:
        """a+ / a0 rows, one per tile of each image (`tiles`; one whole-image tile each by default).

        The with-question prompts and the baseline prompts (no question, or the generic prompt) of the
        images are built in one `build_inputs` call and split back into the two batches (`take_samples`)."""
        cfg, adapter = self.config, self.adapter
        if tiles is not None:
            whole = [[(0, 0, im.width, im.height)] for im in images]
            if tiles != whole:
                questions = [q for q, boxes in zip(questions, tiles) for _ in boxes]
                images = [im.crop(box) for im, boxes in zip(images, tiles) for box in boxes]
        n = len(images)
        if cfg.vaq.map == "raw":
            inputs_q, inputs_0 = adapter.build_inputs(images, questions), None
        else:
            baseline = [cfg.vaq.generic_prompt if cfg.vaq.baseline == "generic" else None] * n
            both = adapter.build_inputs(images + images, questions + baseline)
            rows = adapter.sample_rows(both)
            inputs_q, inputs_0 = take_samples(both, rows, range(n)), take_samples(both, rows, range(n, 2 * n))
        self._check_context(inputs_q)
        return capture_attention(adapter, self.probe, inputs_q, inputs_0, cfg.prefix_reuse)

    def static_layer(self) -> int:
        """The fixed layer: `vaq.layer`, else the adapter's default layer (rescaled to this depth)."""
        num_layers = self.adapter.num_layers
        layer = self.config.vaq.layer
        if layer is None:
            layer = self.adapter.default_layer
            reference = self.adapter.reference_num_layers
            if num_layers != reference:  # the same relative depth on a model of another depth
                layer = int(round(layer / reference * num_layers))
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"vaq.layer={layer} outside the model's {num_layers} decoder layers")
        return min(layer % num_layers, num_layers - 1)

    def _layer_map(self, rows: AttentionRows, layer: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """c of one layer per row (`layer`: an int, or [rows] indices): ([rows, heads, n_visual] with
        non-finite values zeroed and padding masked, [rows] True where it was all finite)."""
        cfg = self.config
        batch = torch.arange(rows.a_plus.shape[0], device=rows.a_plus.device)
        index = (batch, layer) if isinstance(layer, torch.Tensor) else (slice(None), layer)
        a_zero = rows.a_zero[index] if rows.a_zero is not None else None
        c = vaq_ops.contrastive_map(rows.a_plus[index], a_zero, cfg.vaq.map, cfg.vaq.ratio_eps)
        c = c * rows.valid[:, None, :].to(device=c.device, dtype=c.dtype)
        finite = torch.isfinite(c).flatten(1).all(dim=1)
        return torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0), finite

    def _localise(
        self, rows: AttentionRows, images: list[Image.Image], tiles: list[list[PixelBox]] | None = None
    ) -> tuple[list[Localisation | None], list[str | None]]:
        """l*, VAQ and the map of each image from its rows (one per tile: VAQ[l] is the mean over the
        image's tiles, and each tile's map is painted on its part of the image).

        One layer at a time: besides the rows it keeps only head norms [rows, layers, heads] and the
        chosen layer's map (docs/method.md, VAQ)."""
        cfg = self.config
        tiles = tiles if tiles is not None else [[(0, 0, im.width, im.height)] for im in images]
        device = rows.a_plus.device
        owner = torch.tensor([i for i, boxes in enumerate(tiles) for _ in boxes], device=device)
        norms, finite = [], None
        for layer in range(rows.a_plus.shape[1]):
            c, ok = self._layer_map(rows, layer)
            norms.append(vaq_ops.head_scores(c[:, None])[:, 0])
            finite = ok if finite is None else finite & ok
            del c
        scores = torch.stack(norms, dim=1)  # [rows, layers, heads]
        vaq_rows = vaq_ops.layer_scores(scores, cfg.vaq.top_heads)
        vaq = torch.stack([vaq_rows[owner == i].mean(dim=0) for i in range(len(images))])
        if cfg.vaq.select == "vaq":
            layers = vaq_ops.select_layer(vaq, cfg.vaq.layers)
        else:
            layers = torch.full((len(images),), self.static_layer(), dtype=torch.long, device=vaq.device)
        heads = vaq_ops.top_heads(scores, cfg.vaq.top_heads) if cfg.vaq.heads == "top" else None
        row_layers = layers[owner]
        if cfg.vaq.map == "ratio":
            maps = vaq_ops.ratio_map(rows.a_plus, rows.a_zero, row_layers, heads)
        else:
            chosen, _ = self._layer_map(rows, row_layers)  # [rows, heads, n_visual] at each row's l*
            samples = torch.arange(len(row_layers), device=device)
            maps = vaq_ops.head_mean(chosen, None if heads is None else heads[samples, row_layers])
            del chosen
        maps = maps * rows.valid.to(device=maps.device, dtype=maps.dtype)
        finite &= torch.isfinite(maps).all(dim=1)
        finite, layers, vaq, maps, owner = finite.cpu(), layers.cpu(), vaq.cpu(), maps.cpu(), owner.cpu()
        out: list[Localisation | None] = []
        fallbacks: list[str | None] = []
        for i, image in enumerate(images):
            members = (owner == i).nonzero().flatten().tolist()
            if not all(bool(finite[r]) for r in members):
                out.append(None)
                fallbacks.append("non-finite attention; answered with vanilla decoding")
                continue
            pieces = []
            for r, (x0, y0, x1, y1) in zip(members, tiles[i]):
                region = (x0 / image.width, y0 / image.height, x1 / image.width, y1 / image.height)
                layout = placed_layout(rows.layouts[r], region, stretch=cfg.crop.geometry == "whole")
                pieces.append((maps[r, : layout.n_visual], layout))
            shape = canvas_shape(image.size, cfg.crop.canvas)
            heatmap = sum(paint_map(values, layout, 0, shape) for values, layout in pieces)
            box = self._place(heatmap, image.size, pieces) if cfg.crop.enabled else None
            out.append(Localisation(int(layers[i]), vaq[i].tolist(), heatmap, box))
            fallbacks.append(None)
        return out, fallbacks

    def _place(self, heatmap: torch.Tensor, size: tuple[int, int], pieces) -> tuple[int, int, int, int]:
        """The crop box: Con-ViCrop's window on the heatmap, or ViCrop's multi-scale windows on
        the map's cells (`pieces`: (values, layout in the whole image's coordinates) per tile)."""
        crop = self.config.crop
        if crop.strategy == "multiscale":
            grid = search_grid([layout for _, layout in pieces], size)
            cells = sum(cell_masses(values, layout, 0, grid) for values, layout in pieces)
            base = self.adapter.crop_box_side or self.adapter.native_resolution
            return place_multiscale_crop(cells, size, base, list(crop.scales))
        return place_crop(heatmap, size, crop.ratio, crop.min_side)

    def _focus(self, plan: SamplePlan) -> None:
        """The plan's focused views, the original-image region each shows, and its decode path."""
        cfg, image, loc = self.config, plan.image, plan.localisation
        plan.views, plan.regions = [image], [FULL_REGION]
        if plan.fallback is not None:
            plan.path = "vanilla"
            return
        if loc is not None and loc.box is not None:
            x0, y0, x1, y1 = loc.box
            w, h = image.size
            crop_region = (x0 / w, y0 / h, x1 / w, y1 / h)
            if cfg.crop.input == "both" and self.adapter.supports_multi_image:
                plan.views, plan.regions = [image, crop_view(image, loc.box)], [FULL_REGION, crop_region]
            else:
                plan.views, plan.regions = [crop_view(image, loc.box)], [crop_region]
        mode = cfg.decode.mode
        if mode == "auto":
            deep = loc is not None and loc.layer / self.adapter.num_layers >= cfg.gate.depth
            mode = "contrastive" if deep else "direct"
        plan.path = mode

    def _with_masked_view(self, positive, members: list[SamplePlan], repeats: list[int]):
        """Positive inputs followed by LASER's negative stream: the same processed inputs with the top
        cells of each sample's focused view filled on the pixel tensors (docs/method.md, Views). A
        sample's cells are filled once, on its first row, and copied to its repeated rows; each plan's
        `masked_cells` gets its masked cells."""
        cf = self.config.counterfactual
        rows = self.adapter.pixel_rows(positive)
        if not rows:
            raise ValueError("counterfactual.view=mask: the adapter reports no pixel tensor in its inputs")
        negative = BatchFeature({**positive, **{key: positive[key].clone() for key in rows}})
        transform = self.adapter.pixel_transform()
        row = 0
        for plan, count in zip(members, repeats):
            layout = self.adapter.visual_layout(positive, row)
            cells = ranked_cells(layout, plan.regions, plan.localisation.heatmap, cf.mask_ratio)
            generator = torch.Generator().manual_seed(plan.seed + 1)
            fill_cells(self.adapter.pixel_views(negative, row), cells, cf.fill, transform, generator)
            for key, per_row in rows.items():
                start, size = sum(per_row[:row]), per_row[row]
                for k in range(1, count):
                    negative[key][start + k * size : start + (k + 1) * size] = negative[key][start : start + size]
            plan.masked_cells = cells
            row += count
        return stack_streams(positive, negative)

    def _with_noise_view(self, positive, seeds: list[int]):
        """Positive inputs followed by VCD's negative stream: the same processed inputs with diffusion
        noise on the pixel tensors the adapter names (docs/method.md, Views)."""
        cf = self.config.counterfactual
        negative = diffusion_noise_inputs(
            positive, self.adapter.pixel_rows(positive), [int(s) + 1 for s in seeds], cf.noise_step, cf.noise_steps
        )
        return stack_streams(positive, negative)

    @staticmethod
    def _as_input(images: list[Image.Image]):
        return images[0] if len(images) == 1 else images

    @staticmethod
    def _path_groups(plans: list[SamplePlan]) -> dict[str, list[SamplePlan]]:
        """The plans of each decoding stream: direct (direct and vanilla) and contrastive."""
        return {
            "direct": [p for p in plans if p.path in ("direct", "vanilla")],
            "contrastive": [p for p in plans if p.path == "contrastive"],
        }

    def _stream_inputs(self, members: list[SamplePlan], contrastive: bool, repeats: list[int] | None = None):
        """Model inputs of the plans `members` on one path: their focused views (and for `contrastive`,
        rows [R, 2R), the negative views), each sample's row repeated `repeats[j]` times (default once),
        in member order. A sample's negative view is made once, whatever its repeats; each plan's
        `masked_cells` gets its masked cells."""
        repeats = repeats if repeats is not None else [1] * len(members)

        def rows(values):
            return [v for v, r in zip(values, repeats) for _ in range(r)]

        positive = self.adapter.build_inputs(
            rows([self._as_input(p.views) for p in members]), rows([p.question for p in members])
        )
        if contrastive and self.config.counterfactual.view == "noise":
            return self._with_noise_view(positive, rows([p.seed for p in members]))
        if contrastive:  # the masked view, on the focused views' processed pixels
            return self._with_masked_view(positive, members, repeats)
        return positive

    def _streams(self, plans: list[SamplePlan], repeats_of=None):
        """(members, contrastive, inputs) for each decoding path that has plans: the model inputs of its
        members (`_stream_inputs`; each member's row repeated `repeats_of(plan)` times if given)."""
        for path, members in self._path_groups(plans).items():
            if not members:
                continue
            contrastive = path == "contrastive"
            repeats = [repeats_of(p) for p in members] if repeats_of is not None else None
            yield members, contrastive, self._stream_inputs(members, contrastive, repeats)

    def _decode(self, plans: list[SamplePlan]) -> list[tuple[list[int], str]]:
        """(token ids, text) of each plan's answer on its views and path; decoding fallbacks go to the plans."""
        answers: dict[int, tuple[list[int], str]] = {}
        for members, contrastive, inputs in self._streams(plans):
            indices = [p.index for p in members]
            self._check_context(inputs, indices * (2 if contrastive else 1))
            model_inputs = self.adapter.prepare_model_inputs(model_tensors(inputs))
            ids, reasons = generate(
                self.adapter, model_inputs, self.config.decode, contrastive=contrastive,
                seeds=[p.seed for p in members],
            )
            for plan, row_ids, reason in zip(members, ids, reasons):
                answers[plan.index] = (row_ids, self.adapter.decode_text(row_ids))
                plan.fall_back(reason)
        return [answers[p.index] for p in plans]

    def _score(self, plans: list[SamplePlan], continuations) -> list[list[list[float]]]:
        """Per plan the log-probability of each option's tokens on its focused views: one batch of
        (sample, option) rows per path (`scoring.continuation_log_probs`), the rows of a sample sharing
        its views; scoring fallbacks go to the plans."""
        scored: dict[int, list[list[float]]] = {p.index: [] for p in plans}
        for members, contrastive, inputs in self._streams(plans, lambda p: len(continuations[p.index])):
            rows = [(p, ids) for p in members for ids in continuations[p.index]]
            twice = 2 if contrastive else 1
            self._check_context(inputs, [p.index for p, _ in rows] * twice, [len(ids) for _, ids in rows] * twice)
            model_inputs = self.adapter.prepare_model_inputs(model_tensors(inputs))
            log_probs, reasons = continuation_log_probs(
                self.adapter, model_inputs, [ids for _, ids in rows], contrastive=contrastive,
                alpha=self.config.decode.alpha,
            )
            for (plan, _), lp, reason in zip(rows, log_probs, reasons):
                scored[plan.index].append(lp)
                plan.fall_back(reason)
        return [scored[p.index] for p in plans]
