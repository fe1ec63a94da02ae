"""Users' own LLaVA-style models: a timm or open_clip vision tower, a projector and a HF causal LM.

`CompositeVLM.build(vision, language_model, tokenizer)` assembles one; `save_pretrained(path)` writes
`config.json` (`architectures: ["LaserCompositeVLM"]`), `model.safetensors` (tower + projector) and
the language model under `language_model/`; the processor writes `processor_config.json` and the
tokenizer under `tokenizer/`. `create_adapter(path)` then finds `CompositeAdapter` from the config.

Vision spec (a dict, stored in config.json so the tower can be rebuilt offline):
  {"library": "timm", "name": "vit_small_patch16_224", "kwargs": {...}}  -> timm.create_model(name,
      pretrained=False, num_classes=0, **kwargs)
  {"library": "open_clip", "name": "ViT-B-32", "kwargs": {...}}  -> the visual tower of
      open_clip.create_model(name, pretrained=None), `kwargs` overriding its `vision_cfg`.
Each image is resized (whole, squashed) to the tower's square input; its patch tokens, projected, replace
the `<image>` placeholder tokens, row-major over the tower's patch grid.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from ..compat import open_clip_vision_tower
from ._common import prompted_inputs
from ._registry import register_adapter
from .base import ImageInput, VisionLanguageAdapter, VisualLayout, VisualSegment

ARCHITECTURE = "LaserCompositeVLM"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------- vision towers
def build_vision_tower(spec: dict[str, Any], pretrained: bool | str = False) -> nn.Module:
    """The tower of a spec: randomly initialised (the weights then come from the checkpoint), or with the
    library's pretrained weights (`pretrained`: True for timm, a tag such as "openai" for open_clip)."""
    kwargs = dict(spec.get("kwargs", {}))
    if spec["library"] == "timm":
        import timm

        return timm.create_model(spec["name"], pretrained=bool(pretrained), num_classes=0, **kwargs)
    if spec["library"] == "open_clip":
        import open_clip

        config = copy.deepcopy(open_clip.get_model_config(spec["name"]))
        if config is None:
            raise ValueError(f"open_clip has no model config named {spec['name']!r}")
        config["vision_cfg"].update(kwargs)
        if pretrained:
            if kwargs:
                raise ValueError("open_clip pretrained weights need the tower's own shape; drop vision['kwargs']")
            return open_clip.create_model(spec["name"], pretrained=pretrained).visual
        return open_clip_vision_tower(config)
    raise ValueError(f"vision library {spec['library']!r}; expected timm or open_clip")


def tower_info(tower: nn.Module, library: str) -> dict[str, Any]:
    """Input side, patch grid (rows, cols), token width and normalisation of a tower."""
    if library == "timm":
        rows, cols = tower.patch_embed.grid_size
        side = tower.patch_embed.img_size
        cfg = getattr(tower, "pretrained_cfg", {}) or {}
        mean, std = cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD)
        width = tower.num_features
    else:
        rows, cols = tower.grid_size
        side = tower.image_size
        mean = getattr(tower, "image_mean", None) or CLIP_MEAN
        std = getattr(tower, "image_std", None) or CLIP_STD
        width = tower.transformer.width
    side = side if isinstance(side, (tuple, list)) else (side, side)
    return {
        "image_size": [int(side[0]), int(side[1])], "grid": [int(rows), int(cols)], "width": int(width),
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
    }


def patch_tokens(tower: nn.Module, library: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """[images, 3, H, W] -> patch tokens [images, rows * cols, width] (prefix tokens dropped)."""
    if library == "timm":
        return tower.forward_features(pixel_values)[:, tower.num_prefix_tokens :]
    tower.output_tokens = True
    _, tokens = tower(pixel_values)
    return tokens


def build_projector(kind: str, in_features: int, out_features: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))
    raise ValueError(f"projector {kind!r}; expected linear or mlp2x_gelu")


def _cache_kwarg(module: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


# ----------------------------------------------------------------- model
class CompositeVLM(nn.Module):
    """vision tower -> projector -> placeholder embeddings of a causal LM.

    forward(input_ids [B, T], attention_mask [B, T'], pixel_values [N_images, 3, H, W] | None, ...)
    returns the language model's output (logits, cache, attentions).
    """

    def __init__(self, config: dict[str, Any], vision: nn.Module, projector: nn.Module, language_model: nn.Module):
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.language_model = language_model

    @classmethod
    def build(
        cls, vision: dict[str, Any], language_model: nn.Module, tokenizer: Any,
        projector: str = "mlp2x_gelu", image_token: str = "<image>",
    ) -> tuple[CompositeVLM, CompositeProcessor]:
        """A new composite from a vision spec, a causal LM and its tokenizer: (model, processor).

        `vision["pretrained"]` (True for timm, a tag for open_clip) loads the library's weights into the
        tower now; the checkpoint then stores them, so loading it back never downloads."""
        vision = dict(vision)
        tower = build_vision_tower(vision, vision.pop("pretrained", False))
        info = tower_info(tower, vision["library"])
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        hidden = language_model.get_input_embeddings().embedding_dim
        config = {
            "architectures": [ARCHITECTURE], "model_type": "laser_composite", "vision": vision,
            "projector": {"type": projector, "in_features": info["width"], "out_features": hidden},
            "image_token": image_token, "image_token_id": int(tokenizer.convert_tokens_to_ids(image_token)),
            **info,
        }
        model = cls(config, tower, build_projector(projector, info["width"], hidden), language_model)
        return model.to(language_model.dtype).eval(), CompositeProcessor.from_model_config(config, tokenizer)

    @property
    def generation_config(self) -> Any:
        return self.language_model.generation_config

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, rows * cols, hidden]."""
        tokens = patch_tokens(self.vision, self.config["vision"]["library"], pixel_values.to(self.dtype))
        return self.projector(tokens)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> Any:
        if pixel_values is None:  # a decoding step: a generated image token is just a token
            embeds = self.get_input_embeddings()(input_ids)
        else:
            is_image = input_ids == self.config["image_token_id"]
            embeds = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
            features = self.encode_images(pixel_values).to(embeds.dtype)
            if features.shape[0] * features.shape[1] != int(is_image.sum()):
                raise ValueError(
                    f"{int(is_image.sum())} image tokens for {features.shape[0]} images of {features.shape[1]}"
                )
            embeds = embeds.masked_scatter(is_image[..., None], features.reshape(-1, embeds.shape[-1]))
        if cache is not None:
            kwargs[_cache_kwarg(self.language_model)] = cache
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        state = {f"vision.{k}": v for k, v in self.vision.state_dict().items()}
        state.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
        self.language_model.save_pretrained(path / "language_model")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, **lm_kwargs: Any) -> CompositeVLM:
        """`lm_kwargs` (device_map, attn_implementation ...) go to the language model's `from_pretrained`;
        the vision tower and projector follow the language model's input embeddings onto their device."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        language_model = AutoModelForCausalLM.from_pretrained(path / "language_model", dtype=dtype, **lm_kwargs)
        proj = config["projector"]
        model = cls(
            config, build_vision_tower(config["vision"]),
            build_projector(proj["type"], proj["in_features"], proj["out_features"]), language_model,
        )
        state = load_file(str(path / "model.safetensors"))
        for prefix, module in (("vision.", model.vision), ("projector.", model.projector)):
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            module.to(device=language_model.get_input_embeddings().weight.device, dtype=dtype)
        return model.eval()


# ----------------------------------------------------------------- processor
class CompositeProcessor:
    """Expands each `<image>` to rows*cols placeholders, tokenizes (left padding) and preprocesses images
    (whole-image resize to the tower's side, per-channel normalisation)."""

    def __init__(self, tokenizer: Any, image_token: str, image_size: list[int], grid: list[int],
                 mean: list[float], std: list[float]):
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.image_token = image_token
        self.image_size, self.grid = list(image_size), list(grid)
        self.mean, self.std = list(mean), list(std)

    @classmethod
    def from_model_config(cls, config: dict[str, Any], tokenizer: Any) -> CompositeProcessor:
        keys = ("image_token", "image_size", "grid", "mean", "std")
        return cls(tokenizer, **{k: config[k] for k in keys})

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        height, width = self.image_size
        array = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32) / 255
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (tensor - mean) / std

    def __call__(self, text: list[str], images: list[Image.Image] | None = None, **kwargs: Any) -> BatchFeature:
        n_tokens = self.grid[0] * self.grid[1]
        expanded = [t.replace(self.image_token, self.image_token * n_tokens) for t in text]
        data = dict(self.tokenizer(expanded, return_tensors="pt", padding=True))
        if images:
            data["pixel_values"] = torch.stack([self.preprocess(im) for im in images])
        return BatchFeature(data=data)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        keys = ("image_token", "image_size", "grid", "mean", "std")
        (path / "processor_config.json").write_text(json.dumps({k: getattr(self, k) for k in keys}, indent=2))
        self.tokenizer.save_pretrained(path / "tokenizer")

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> CompositeProcessor:
        """The saved processor; `overrides` replace saved options (image_size, grid, mean, std, image_token)."""
        from transformers import AutoTokenizer

        path = Path(path)
        config = json.loads((path / "processor_config.json").read_text())
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise ValueError(f"composite processor has no option {unknown[0]!r}; options: {', '.join(sorted(config))}")
        return cls(AutoTokenizer.from_pretrained(path / "tokenizer"), **{**config, **overrides})


# ----------------------------------------------------------------- adapter
@register_adapter
class CompositeAdapter(VisionLanguageAdapter):
    """LLaVA-style prompt `USER: <image>\\n{question}\\n{instruction} ASSISTANT:` on a `CompositeVLM`."""

    name = "composite"
    architectures = (ARCHITECTURE,)
    default_layer = 14
    reference_num_layers = 32
    native_resolution = 224
    supports_multi_image = True
    default_checkpoint = None

    @classmethod
    def from_pretrained(cls, path: str, **load_kwargs: Any) -> CompositeAdapter:
        instruction = load_kwargs.pop("instruction", None)
        processor_kwargs = load_kwargs.pop("processor_kwargs", None) or {}
        model = CompositeVLM.from_pretrained(path, **load_kwargs)
        processor = CompositeProcessor.from_pretrained(path, **processor_kwargs)
        kwargs = {"instruction": instruction} if instruction is not None else {}
        return cls(model, processor, **kwargs)

    def __init__(self, model: CompositeVLM, processor: CompositeProcessor, **kwargs: Any):
        super().__init__(model, processor, **kwargs)
        self.image_token_id = int(model.config["image_token_id"])
        self.grid = tuple(model.config["grid"])
        self.native_resolution = int(max(model.config["image_size"]))

    def prompt(self, question: str | None, n_images: int) -> str:
        images = "".join(f"{self.processor.image_token}\n" for _ in range(n_images))
        question_part = f"{question}\n" if question is not None else ""
        return f"USER: {images}{question_part}{self.instruction} ASSISTANT:"

    def build_inputs(
        self, images: list[ImageInput], questions: list[str | None], *, with_question: bool = True
    ) -> BatchFeature:
        return prompted_inputs(self, images, questions, with_question)

    def pixel_transform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """v in 0..255 -> (v / 255 - mean) / std, as `CompositeProcessor.preprocess`."""
        mean = torch.tensor(self.processor.mean, dtype=torch.float64)
        std = torch.tensor(self.processor.std, dtype=torch.float64)
        return (1 / (255 * std)).float(), (-mean / std).float()

    def decoder_layers(self) -> nn.ModuleList:
        lm = self.model.language_model
        decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
        return decoder.layers

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        positions = (inputs["input_ids"][index] == self.image_token_id).nonzero().flatten()
        sizes = inputs["laser_image_sizes"][index]
        per_image = self.grid[0] * self.grid[1]
        if positions.numel() != per_image * len(sizes):
            raise ValueError(f"sample {index}: {positions.numel()} image tokens for {len(sizes)} image(s)")
        segments = [
            VisualSegment(i, positions[i * per_image : (i + 1) * per_image], self.grid, (0.0, 0.0, 1.0, 1.0))
            for i in range(len(sizes))
        ]
        return VisualLayout(segments, image_sizes=list(sizes))
