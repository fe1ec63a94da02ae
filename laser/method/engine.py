"""`LaserEngine`: VAQ layer selection, Con-ViCrop and VAT decoding on any registered adapter."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from ..adapters.base import VisionLanguageAdapter
from . import vaq as vaq_ops
from .attention import AttentionRows, capture_attention, model_tensors
from .canvas import canvas_shape, paint_map
from .config import LaserConfig
from .crop import place_crop, place_multiscale_crop
from .decoding import generate
from .images import to_rgb
from .prediction import Prediction
from .probe import AttentionProbe
from .views import counterfactual_views, crop_view, diffusion_noise_view


@dataclass
class Localisation:
    """Per-sample outcome of layer selection: l*, VAQ[l] and the map painted on the original."""

    layer: int
    vaq: list[float]
    canvas: torch.Tensor  # [h, w] density over the original image
    box: tuple[int, int, int, int] | None


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


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

    def _may_contrast(self) -> bool:
        return self.config.decode.mode in ("contrastive", "auto")

    # ----------------------------------------------------------------- public API
    def answer(self, image: Image.Image, question: str, seed: int | None = None) -> Prediction:
        return self.answer_batch([image], [question], None if seed is None else [seed])[0]

    @torch.inference_mode()
    def answer_batch(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        seeds: Sequence[int] | None = None,
    ) -> list[Prediction]:
        """Answers for a batch; `seeds` (one per sample, default `config.seed`) drive sampling and
        random views, so a sample's answer does not depend on its batch."""
        cfg = self.config
        if len(images) != len(questions):
            raise ValueError(f"answer_batch: {len(images)} images for {len(questions)} questions")
        if not len(images):
            return []
        images = [to_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        questions = [self._check_question(q, i) for i, q in enumerate(questions)]
        seeds = list(seeds) if seeds is not None else [cfg.seed] * len(images)
        timer = StageTimer()
        start = time.perf_counter()

        localisations: list[Localisation | None] = [None] * len(images)
        fallbacks: list[str | None] = [None] * len(images)
        if cfg.localize:
            with timer.stage("attention"):
                rows = self._attend(images, questions)
            with timer.stage("localise"):
                localisations, fallbacks = self._localise(rows, images)

        with timer.stage("views"):
            focused, regions, paths = self._focus(images, localisations, fallbacks)
        with timer.stage("decode"):
            answers, masked, decode_fallbacks = self._decode(
                images, focused, regions, paths, localisations, questions, seeds
            )

        total = time.perf_counter() - start
        per_sample = {k: v / len(images) for k, v in timer.seconds.items()}
        per_sample["total"] = total / len(images)
        predictions = []
        for i, (ids, text) in enumerate(answers):
            loc = localisations[i]
            predictions.append(
                Prediction(
                    answer=text,
                    layer=loc.layer if loc else None,
                    vaq=loc.vaq if loc else None,
                    box=list(loc.box) if loc and loc.box and paths[i] != "vanilla" else None,
                    path=paths[i],
                    timings=dict(per_sample),
                    method=cfg.name,
                    fallback=fallbacks[i] or decode_fallbacks[i],
                    token_ids=ids,
                    heatmap=loc.canvas if loc is not None and cfg.save_heatmap else None,
                    masked_cells=masked[i],
                )
            )
        return predictions

    # ----------------------------------------------------------------- stages
    def _check_question(self, question: str, index: int) -> str:
        if not isinstance(question, str):
            raise TypeError(f"questions[{index}] must be a string, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise ValueError(f"questions[{index}] is empty")
        return question

    def _check_context(self, inputs, indices: list[int] | None = None) -> None:
        """Raise if a row's prompt plus `decode.max_new_tokens` exceeds the LM's `max_position_embeddings`
        (a model silently degrades past its context instead of failing)."""
        limit = getattr(self.adapter.language_config(), "max_position_embeddings", None)
        mask = inputs.get("attention_mask")
        if not isinstance(limit, int) or limit <= 0 or mask is None:
            return
        lengths = mask.reshape(mask.shape[0], -1).sum(dim=-1).tolist()
        new = self.config.decode.max_new_tokens
        for row, length in enumerate(lengths):
            if length + new > limit:
                i = indices[row] if indices is not None else row
                raise ValueError(
                    f"questions[{i}]: prompt of {int(length)} tokens + decode.max_new_tokens={new} exceeds the "
                    f"language model's max_position_embeddings={limit}; shorten the question or lower "
                    "decode.max_new_tokens"
                )

    def _attend(self, images: list[Image.Image], questions: list[str]) -> AttentionRows:
        cfg, adapter = self.config, self.adapter
        inputs_q = adapter.build_inputs(images, questions, with_question=True)
        self._check_context(inputs_q)
        inputs_0 = None
        if cfg.vaq.map != "raw":
            if cfg.vaq.baseline == "generic":
                generic = [cfg.vaq.generic_prompt] * len(images)
                inputs_0 = adapter.build_inputs(images, generic, with_question=True)
            else:
                inputs_0 = adapter.build_inputs(images, questions, with_question=False)
        return capture_attention(adapter, self.probe, inputs_q, inputs_0, cfg.prefix_reuse)

    def static_layer(self) -> int:
        """The fixed layer: `vaq.layer`, else the adapter's default layer (rescaled to this depth)."""
        num_layers = self.adapter.num_layers
        layer = self.config.vaq.layer
        if layer is None:
            layer = self.adapter.default_layer
            reference = self.adapter.reference_num_layers
            if layer >= num_layers:
                layer = int(round(layer / reference * num_layers))
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"vaq.layer={layer} outside the model's {num_layers} decoder layers")
        return min(layer % num_layers, num_layers - 1)

    def _localise(
        self, rows: AttentionRows, images: list[Image.Image]
    ) -> tuple[list[Localisation | None], list[str | None]]:
        cfg = self.config
        c = vaq_ops.contrastive_map(rows.a_plus, rows.a_zero, cfg.vaq.map, cfg.vaq.ratio_eps)
        c = c * rows.valid[:, None, None, :].to(device=c.device, dtype=c.dtype)
        finite = torch.isfinite(c).flatten(1).all(dim=1)
        c = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
        scores = vaq_ops.head_scores(c)
        vaq = vaq_ops.layer_scores(scores, cfg.vaq.top_heads)
        if cfg.vaq.select == "vaq":
            layers = vaq_ops.select_layer(vaq, cfg.vaq.layers)
        else:
            layers = torch.full((len(images),), self.static_layer(), dtype=torch.long, device=c.device)
        heads = vaq_ops.top_heads(scores, cfg.vaq.top_heads) if cfg.vaq.heads == "top" else None
        maps = vaq_ops.localisation_map(c, layers, heads)
        out: list[Localisation | None] = []
        fallbacks: list[str | None] = []
        for i, image in enumerate(images):
            if not bool(finite[i]):
                out.append(None)
                fallbacks.append("non-finite attention; answered with vanilla decoding")
                continue
            n = rows.layouts[i].n_visual
            shape = canvas_shape(image.size, cfg.crop.canvas)
            canvas = paint_map(maps[i, :n], rows.layouts[i], 0, shape)
            box = self._place(canvas, image.size) if cfg.crop.enabled else None
            out.append(Localisation(int(layers[i]), [float(v) for v in vaq[i]], canvas, box))
            fallbacks.append(None)
        return out, fallbacks

    def _place(self, canvas: torch.Tensor, size: tuple[int, int]) -> tuple[int, int, int, int]:
        crop = self.config.crop
        if crop.strategy == "multiscale":
            return place_multiscale_crop(canvas, size, self.adapter.native_resolution, list(crop.scales))
        return place_crop(canvas, size, crop.ratio, crop.min_side)

    def _focus(self, images, localisations, fallbacks):
        """Focused images per sample, the original-image region each shows, and the decode path."""
        cfg = self.config
        focused, regions, paths = [], [], []
        num_layers = self.adapter.num_layers
        for i, image in enumerate(images):
            loc = localisations[i]
            if fallbacks[i] is not None:
                focused.append([image])
                regions.append([(0.0, 0.0, 1.0, 1.0)])
                paths.append("vanilla")
                continue
            if loc is not None and loc.box is not None:
                x0, y0, x1, y1 = loc.box
                w, h = image.size
                crop_region = (x0 / w, y0 / h, x1 / w, y1 / h)
                if cfg.crop.input == "both" and self.adapter.supports_multi_image:
                    focused.append([image, crop_view(image, loc.box)])
                    regions.append([(0.0, 0.0, 1.0, 1.0), crop_region])
                else:
                    focused.append([crop_view(image, loc.box)])
                    regions.append([crop_region])
            else:
                focused.append([image])
                regions.append([(0.0, 0.0, 1.0, 1.0)])
            mode = cfg.decode.mode
            if mode == "auto":
                mode = "contrastive" if loc is not None and loc.layer / num_layers >= cfg.gate.depth else "direct"
            paths.append(mode)
        return focused, regions, paths

    def _negative_views(self, focused, regions, localisations, seeds, index, layout):
        """Negative view of sample `index`; `layout` is its focused view's layout (mask view only)."""
        cf = self.config.counterfactual
        generator = torch.Generator().manual_seed(int(seeds[index]) + 1)
        if cf.view == "noise":
            views = [diffusion_noise_view(im, cf.noise_step, cf.noise_steps, generator) for im in focused[index]]
            return views, None
        return counterfactual_views(
            focused[index], layout, regions[index], localisations[index].canvas,
            cf.mask_ratio, cf.fill, generator,
        )

    @staticmethod
    def _as_input(images: list[Image.Image]):
        return images[0] if len(images) == 1 else images

    def _decode(self, images, focused, regions, paths, localisations, questions, seeds):
        cfg = self.config
        n = len(images)
        answers: list[tuple[list[int], str] | None] = [None] * n
        masked: list[list | None] = [None] * n
        fallbacks: list[str | None] = [None] * n
        groups = {
            "direct": [i for i in range(n) if paths[i] in ("direct", "vanilla")],
            "contrastive": [i for i in range(n) if paths[i] == "contrastive"],
        }
        for path, members in groups.items():
            if not members:
                continue
            pos = [self._as_input(focused[i]) for i in members]
            qs = [questions[i] for i in members]
            contrastive = path == "contrastive"
            if contrastive:
                neg = []
                layouts = [None] * len(members)
                if cfg.counterfactual.view == "mask":  # the focused views' grids, from one processor call
                    focus_inputs = self.adapter.build_inputs(pos, qs)
                    layouts = [self.adapter.visual_layout(focus_inputs, j) for j in range(len(members))]
                for i, layout in zip(members, layouts):
                    views, cells = self._negative_views(focused, regions, localisations, seeds, i, layout)
                    neg.append(self._as_input(views))
                    masked[i] = cells
                inputs = self.adapter.build_inputs(pos + neg, qs + qs)
            else:
                inputs = self.adapter.build_inputs(pos, qs)
            self._check_context(inputs, members * (2 if contrastive else 1))
            generators = [torch.Generator().manual_seed(int(seeds[i])) for i in members]
            model_inputs = self.adapter.prepare_model_inputs(model_tensors(inputs))
            ids, reasons = generate(
                self.adapter, model_inputs, cfg.decode, contrastive=contrastive, generators=generators
            )
            for j, i in enumerate(members):
                answers[i] = (ids[j], self.adapter.decode_text(ids[j]))
                fallbacks[i] = reasons[j]
        return answers, masked, fallbacks
