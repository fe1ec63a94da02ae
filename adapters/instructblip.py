"""InstructBLIP (`InstructBlipForConditionalGeneration`): a Q-Former's query tokens are the LM's visual tokens.

The query tokens see the image only through the Q-Former's cross-attention, and the Q-Former also reads
the prompt, so the visual tokens depend on the question (no prefix reuse). As in ViCrop, the map over
patches chains the LM's attention over the query tokens with the Q-Former's cross-attention over
patches: `rows_patch[p] = sum_q rows[q] * X[q, p]`, X the mean over heads of cross-attention layer
`cross_attention_layer` (ViCrop's code: index 2 of the Q-Former's cross-attention layers, i.e. Q-Former
layer 4 of InstructBLIP's 12; `None` averages every cross-attention layer). ViCrop's LM layer is 15.
`probe_positions` are the query tokens; `visual_layout` is the image's patch grid.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import BatchFeature

from ._common import check_questions
from ._registry import register_adapter
from .base import ImageInput, VisionLanguageAdapter, VisualLayout, VisualSegment


class QFormerVLM(nn.Module):
    """Runs an `InstructBlipForConditionalGeneration` as the engine expects.

    A forward with `pixel_values` is a prefill: image features through the Q-Former replace the
    `<image>` placeholders, and the cross-attention of the query tokens over [CLS] + patches is kept
    in `cross_attention` ([batch, queries, 1 + patches], mean over heads of the cross-attention layer
    `layer` — an index into the Q-Former's cross-attention layers — or over all of them when `layer`
    is None). A forward without (a step on the KV cache) runs the language model alone.
    """

    def __init__(self, blip: nn.Module, layer: int | None = None):
        super().__init__()
        if not getattr(blip.config, "use_decoder_only_language_model", True):
            raise ValueError("instructblip: only decoder-only language models (Vicuna, OPT) are supported")
        self.blip = blip
        self.layer = layer
        self.cross_attention: torch.Tensor | None = None
        self._recorded: list[torch.Tensor] | None = None
        lm_params = inspect.signature(blip.language_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in lm_params else "past_key_values"
        for layer in blip.qformer.encoder.layer:
            if getattr(layer, "has_cross_attention", False):
                layer.crossattention.attention.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._recorded is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        encoder = kwargs["encoder_hidden_states"]
        batch, n_query, n_key = hidden.shape[0], hidden.shape[1], encoder.shape[1]
        dim = module.attention_head_size
        q = module.query(hidden).view(batch, n_query, -1, dim).transpose(1, 2).float()
        k = module.key(encoder).view(batch, n_key, -1, dim).transpose(1, 2).float()
        probs = torch.softmax(q @ k.transpose(-1, -2) * module.scaling, dim=-1)  # [B, H, Q, K]
        self._recorded.append(probs.mean(dim=1))

    @property
    def config(self) -> Any:
        return self.blip.config

    @property
    def generation_config(self) -> Any:
        return self.blip.generation_config

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        self.blip.save_pretrained(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> Any:
        """The language model's forward on the prompt with the Q-Former's query tokens in place of the
        image placeholders; `kwargs` may hold `qformer_input_ids` / `qformer_attention_mask` (the
        processor's), the rest go to the language model."""
        qformer_input_ids = kwargs.pop("qformer_input_ids", None)
        qformer_attention_mask = kwargs.pop("qformer_attention_mask", None)
        blip = self.blip
        is_image = input_ids == blip.config.image_token_id
        embeds = blip.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            self._recorded = []
            try:
                features = blip.get_image_features(
                    pixel_values, qformer_input_ids=qformer_input_ids,
                    qformer_attention_mask=qformer_attention_mask, return_dict=True,
                ).pooler_output
                recorded = torch.stack(self._recorded)  # [cross-attention layers, B, Q, K]
                self.cross_attention = recorded.mean(dim=0) if self.layer is None else recorded[self.layer]
            finally:
                self._recorded = None
            embeds = embeds.masked_scatter(is_image[..., None], features.to(embeds.dtype))
        elif is_image.any():
            raise ValueError("image placeholders without pixel_values")
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        return blip.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )


@register_adapter
class InstructBlipAdapter(VisionLanguageAdapter):
    """Prompt: `<image>`x num_query_tokens, then `{question}\\n{instruction}` (the Q-Former reads the
    same text). One image per sample."""

    name = "instructblip"
    architectures = ("InstructBlipForConditionalGeneration",)
    default_layer = 15  # ViCrop's LM layer
    reference_num_layers = 32
    native_resolution = 224
    # ViCrop's Q-Former cross-attention layer: an index into the cross-attention layers of a Q-Former
    # that has `reference_cross_attention_layers` of them; rescaled to the same relative depth otherwise
    cross_attention_layer: ClassVar[int | None] = 2
    reference_cross_attention_layers: ClassVar[int] = 6
    supports_multi_image = False
    supports_prefix_reuse = False  # the Q-Former's visual tokens depend on the question
    default_checkpoint = "Salesforce/instructblip-vicuna-7b"

    @classmethod
    def from_pretrained(cls, path: str, **load_kwargs: Any) -> InstructBlipAdapter:
        from transformers import AutoProcessor, InstructBlipForConditionalGeneration

        instruction = load_kwargs.pop("instruction", None)
        processor_kwargs = load_kwargs.pop("processor_kwargs", None) or {}
        load_kwargs.setdefault("dtype", torch.float32)
        model = InstructBlipForConditionalGeneration.from_pretrained(path, **load_kwargs).eval()
        processor = AutoProcessor.from_pretrained(path, **processor_kwargs)
        kwargs = {"instruction": instruction} if instruction is not None else {}
        return cls(model, processor, **kwargs)

    def __init__(self, model: nn.Module, processor: Any, **kwargs: Any):
        runner = model if isinstance(model, QFormerVLM) else QFormerVLM(model)
        runner.layer = self.cross_layer_index(runner.blip)
        super().__init__(runner, processor, **kwargs)
        self.tokenizer.padding_side = "left"
        processor.qformer_tokenizer.padding_side = "right"  # absolute positions in the Q-Former
        config = runner.blip.config
        self.image_token_id = int(config.image_token_id)
        self.num_query_tokens = int(config.num_query_tokens)
        vision = config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        self.grid = (side, side)

    def cross_layer_index(self, blip: nn.Module) -> int | None:
        """Index (into the Q-Former's cross-attention layers) of the layer the patch map is read from:
        `cross_attention_layer`, rescaled to the same relative depth when the Q-Former has another number
        of cross-attention layers than the reference's; None = the mean over all of them."""
        if self.cross_attention_layer is None:
            return None
        count = sum(bool(getattr(layer, "has_cross_attention", False)) for layer in blip.qformer.encoder.layer)
        if count == 0:
            raise ValueError("instructblip: the Q-Former has no cross-attention layer")
        index = self.cross_attention_layer
        if count != self.reference_cross_attention_layers:
            index = int(round(index / self.reference_cross_attention_layers * count))
        return min(max(index, 0), count - 1)

    def prompt(self, question: str | None) -> str:
        return f"{question}\n{self.instruction}" if question is not None else self.instruction

    def build_inputs(
        self, images: list[ImageInput], questions: list[str | None], *, with_question: bool = True
    ) -> BatchFeature:
        """LM prompt (query tokens, then the text; left-padded) and Q-Former text (right-padded) per
        sample; a question of None (or `with_question=False`) leaves the instruction alone."""
        check_questions(images, questions)
        if any(isinstance(im, (list, tuple)) for im in images):
            raise ValueError("instructblip takes one image per sample")
        texts = [self.prompt(q if with_question else None) for q in questions]
        qformer = self.processor.qformer_tokenizer(texts, return_tensors="pt", padding=True)
        prompts = [[self.image_token_id] * self.num_query_tokens + ids for ids in self.tokenizer(texts)["input_ids"]]
        length = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
        pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        return BatchFeature({
            "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
            "qformer_input_ids": qformer["input_ids"], "qformer_attention_mask": qformer["attention_mask"],
            "laser_image_sizes": [[im.size] for im in images],
        })

    def decoder_layers(self) -> nn.ModuleList:
        lm = self.model.blip.language_model  # decoder-only LMs (Vicuna, OPT); not the Flan-T5 variants
        return lm.get_decoder().layers

    def probe_positions(self, inputs: BatchFeature, index: int) -> torch.Tensor:
        """The query tokens' positions: [num_query_tokens]."""
        return (inputs["input_ids"][index] == self.image_token_id).nonzero().flatten()

    def visual_layout(self, inputs: BatchFeature, index: int) -> VisualLayout:
        """The patch grid of the (squashed, whole) image; there are no patch tokens in the sequence,
        so `positions` are -1 placeholders."""
        rows, cols = self.grid
        segment = VisualSegment(0, torch.full((rows * cols,), -1), self.grid, (0.0, 0.0, 1.0, 1.0))
        return VisualLayout([segment], image_sizes=list(inputs["laser_image_sizes"][index]))

    def project_rows(
        self, rows: torch.Tensor, inputs: BatchFeature, layouts: list[VisualLayout]
    ) -> torch.Tensor:
        """[B, L, H, num_query] -> [B, L, H, patches] through the last prefill's cross-attention."""
        cross = self.model.cross_attention
        if cross is None or cross.shape[0] != rows.shape[0]:
            raise RuntimeError("instructblip: project_rows needs the cross-attention of the forward on `inputs`")
        patches = cross[:, None, :, 1:].to(rows.device, torch.float32)  # [B, 1, Q, P], [CLS] dropped
        return torch.matmul(rows[..., : self.num_query_tokens].float(), patches)
