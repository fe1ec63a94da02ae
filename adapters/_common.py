"""`PromptAdapter`: the shared body of adapters whose processor expands one image placeholder per image.

A family declares its model class, prompt template, where its decoder layers are and how to read
its layout; loading, prompting and left-padded batching are shared here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import BatchFeature

from .base import Box, ImageInput, VisionLanguageAdapter, VisualLayout, VisualSegment


def as_image_list(images: ImageInput) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def check_questions(images: list, questions: list[str | None]) -> None:
    """Raise unless there is one question (a string, or None for no question) per sample."""
    if len(images) != len(questions):
        raise ValueError(f"build_inputs: {len(images)} images for {len(questions)} questions")
    for i, question in enumerate(questions):
        if question is not None and not isinstance(question, str):
            raise TypeError(f"build_inputs: questions[{i}] is a {type(question).__name__}; expected a string or None")


def prompted_inputs(
    adapter: VisionLanguageAdapter,
    images: list[ImageInput],
    questions: list[str | None],
    with_question: bool = True,
    nested_images: bool = False,
) -> BatchFeature:
    """`build_inputs` of prompt-based adapters: `adapter.prompt(question, n_images)` per sample (question
    None without `with_question`, or where it is None), one left-padded processor call over the batch
    (images flattened, or one list per sample with `nested_images`), and each sample's image sizes in
    `laser_image_sizes`."""
    check_questions(images, questions)
    per_sample = [as_image_list(im) for im in images]
    texts = [adapter.prompt(q if with_question else None, len(ims)) for q, ims in zip(questions, per_sample)]
    flat = per_sample if nested_images else [im for ims in per_sample for im in ims]
    inputs = adapter.processor(text=texts, images=flat, return_tensors="pt", padding=True)
    inputs.pop("labels", None)
    inputs["laser_image_sizes"] = [[im.size for im in ims] for ims in per_sample]
    return inputs


class PromptAdapter(VisionLanguageAdapter):
    """Prompt = `template.format(images=..., question=..., instruction=...)`.

    `question` is `"{question}\\n"` (or empty without the question); `images` is `image_text` once per
    image, with `{token}` replaced by the processor's image placeholder.
    """

    model_class_name: ClassVar[str] = ""
    default_checkpoint: ClassVar[str] = ""
    template: ClassVar[str] = "USER: {images}{question}{instruction} ASSISTANT:"
    image_text: ClassVar[str] = "{token}\n"
    nested_images: ClassVar[bool] = False  # processor takes one list of images per sample
    # path of the decoder layers from the top-level model
    layers_path: ClassVar[str] = "model.language_model.layers"

    @classmethod
    def from_pretrained(cls, path: str, **load_kwargs: Any) -> PromptAdapter:
        """`load_kwargs` go to the model's `from_pretrained` (dtype, device_map, attn_implementation,
        max_memory ...), except `instruction` and `processor_kwargs` (the processor's options, e.g.
        Qwen's `max_pixels`)."""
        import transformers

        instruction = load_kwargs.pop("instruction", None)
        processor_kwargs = load_kwargs.pop("processor_kwargs", None) or {}
        load_kwargs.setdefault("dtype", torch.float32)
        model_cls = getattr(transformers, cls.model_class_name)
        model = model_cls.from_pretrained(path, **load_kwargs).eval()
        processor = cls.load_processor(path, **processor_kwargs)
        kwargs = {"instruction": instruction} if instruction is not None else {}
        return cls(model, processor, **kwargs)

    @classmethod
    def load_processor(cls, path: str, **options: Any) -> Any:
        """The checkpoint's processor with `options` (`processor_kwargs`) applied."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **options)

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any):
        super().__init__(model, processor, **kwargs)
        self.tokenizer.padding_side = "left"
        config = model.config
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = config.image_token_index
        self.image_token_id = int(token_id)

    # ----------------------------------------------------------------- prompts
    def placeholder(self) -> str:
        """The text the processor expands into one image's tokens."""
        return getattr(self.processor, "image_token", "<image>")

    def prompt(self, question: str | None, n_images: int) -> str:
        images = self.image_text.format(token=self.placeholder()) * n_images
        question_part = f"{question}\n" if question is not None else ""
        return self.template.format(images=images, question=question_part, instruction=self.instruction)

    def build_inputs(
        self, images: list[ImageInput], questions: list[str | None], *, with_question: bool = True
    ) -> BatchFeature:
        return prompted_inputs(self, images, questions, with_question, self.nested_images)

    # ----------------------------------------------------------------- structure
    def decoder_layers(self) -> nn.ModuleList:
        module: Any = self.model
        for part in self.layers_path.split("."):
            module = getattr(module, part)
        return module

    def image_token_positions(self, inputs: BatchFeature, index: int) -> torch.Tensor:
        """Positions of the image placeholder tokens of sample `index`: [n]."""
        return (inputs["input_ids"][index] == self.image_token_id).nonzero().flatten()

    def check_count(self, index: int, found: int, expected: int) -> None:
        if found != expected:
            raise ValueError(
                f"{self.name}: sample {index} has {found} image tokens, the layout expects {expected}"
            )

    def fixed_grid_layout(self, inputs: BatchFeature, index: int, grid: tuple[int, int], box=None) -> VisualLayout:
        """One `grid` of tokens per image, in order; `box(size) -> Box` gives the region each grid covers
        (default: the whole image)."""
        positions = self.image_token_positions(inputs, index)
        sizes = inputs["laser_image_sizes"][index]
        per_image = grid[0] * grid[1]
        self.check_count(index, positions.numel(), per_image * len(sizes))
        whole: Box = (0.0, 0.0, 1.0, 1.0)
        segments = [
            VisualSegment(i, positions[i * per_image : (i + 1) * per_image], grid, box(size) if box else whole)
            for i, size in enumerate(sizes)
        ]
        return VisualLayout(segments, image_sizes=list(sizes))
