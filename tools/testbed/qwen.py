"""The Qwen2-VL testbed LVLM: a tiny, real `Qwen2VLForConditionalGeneration` built offline.

Visual layout (Qwen2-VL's, unlike the LLaVA testbed's fixed 64 px / 8x8 grid): dynamic resolution, 8 px
patches (temporal patch 2: a still image is repeated), each through the patch merger (`spatial_merge_size`
1: one patch per visual token), 2D rotary positions in the tower and multimodal rotary positions in the
LM. A square image resized to S px gives (S/8)^2 visual tokens in row-major order: 64 px -> 8x8 = 64 tokens
(the default `max_pixels` = 64*64, the LLaVA testbed's grid), 128 px -> 16x16 = 256 tokens (`max_pixels` =
128*128, e.g. `processor_kwargs={"max_pixels": 128 * 128}`). One token covers 8x8 px of the resized image,
the cell of `tools/testbed/views.py`'s label grid at any view size. (With 4 px patches merged 2x2, Qwen2-VL's
own layout, the tower did not learn to put a box's digit on the box's tokens: docs/cross_architecture.md.)

`min_pixels` = 64*64 too: every image (a small crop included) gets at least the 8x8 tokens the LLaVA
testbed always gets.

The tokenizer is the word-level one of `tools/testbed/model.py` (no `<s>`: Qwen prompts have none) plus
Qwen2-VL's special tokens and the words of the adapter's system prompt; `prompt(question)` is exactly the
prompt `adapters/qwen_vl.py` sends (system prompt, image first, then the question, then the instruction),
also the processor's chat template. `QwenBatcher` turns `views.sample_views` output into training tensors,
patchified as `Qwen2VLImageProcessor` does (`patchify`; the tests check they agree).
"""

from __future__ import annotations

import torch
from tiny_lvlm import word_tokenizer  # tools/tiny_lvlm.py
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

from laser.testbed.scenes import INSTRUCTION, MODEL_INPUT
from testbed.batching import conversations, left_pad, normalised_pixels
from testbed.model import vocabulary

PATCH, MERGE, FRAMES = 8, 1, 2
TOKEN_PX = PATCH * MERGE  # px of the resized image per visual token (= views.GRID_PX)
HIRES = 2 * MODEL_INPUT  # the higher resolution the model is also trained at (128 px, 16x16 tokens)
QWEN_SPECIAL = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<|endoftext|>",
)
SYSTEM = "You are a helpful assistant."  # adapters/qwen_vl.py Qwen2VLAdapter.system_prompt
EXTRA_WORDS = ("system", "you", "helpful")  # the system prompt's words missing from the testbed vocabulary
CHAT_TEMPLATE = (
    "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<question>\\n<instruction>"}]}]
renders `prompt(question)`."""
ARCH = dict(text_hidden=96, text_layers=4, heads=4, kv_heads=4, vision_embed=96, vision_layers=3, vision_heads=4,
            rope_theta=10000.0)


def prompt(question: str | None, instruction: str = INSTRUCTION) -> str:
    """The adapter's prompt (`Qwen2VLAdapter.prompt(question, 1)`)."""
    q = f"{question}\n" if question is not None else ""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            f"{q}{instruction}<|im_end|>\n<|im_start|>assistant\n")


def follow_up(question: str, instruction: str = INSTRUCTION) -> str:
    """A later user turn of one conversation about the same image (after the previous answer's `<|im_end|>`)."""
    return f"\n<|im_start|>user\n{question}\n{instruction}<|im_end|>\n<|im_start|>assistant\n"


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = word_tokenizer([*vocabulary(), *EXTRA_WORDS], extra_special=QWEN_SPECIAL, n_filler=0, lowercase=True,
                         bos=False, model_max_length=1024)
    tok.eos_token = "<|im_end|>"
    return tok


def build_processor(tokenizer=None, max_pixels: int = MODEL_INPUT * MODEL_INPUT) -> Qwen2VLProcessor:
    tokenizer = tokenizer or build_tokenizer()
    common = {"patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": FRAMES}
    size = {"shortest_edge": MODEL_INPUT * MODEL_INPUT, "longest_edge": max_pixels}
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size, **common), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(**common), chat_template=CHAT_TEMPLATE)


def build_config(tok, text_hidden: int, text_layers: int, heads: int, kv_heads: int, vision_embed: int,
                 vision_layers: int, vision_heads: int, rope_theta: float = 10000.0) -> Qwen2VLConfig:
    head_dim = text_hidden // heads
    assert head_dim % 2 == 0 and (head_dim // 2) % 3 == 0, "mrope_section splits head_dim / 2 in three (t, h, w)"
    third = head_dim // 6
    ids = tok.convert_tokens_to_ids
    text = Qwen2VLTextConfig(
        vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=3 * text_hidden, num_hidden_layers=text_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": [third] * 3},
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    vision = Qwen2VLVisionConfig(depth=vision_layers, embed_dim=vision_embed, hidden_size=text_hidden,
                                 num_heads=vision_heads, mlp_ratio=4, patch_size=PATCH, spatial_merge_size=MERGE,
                                 temporal_patch_size=FRAMES)
    return Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=ids("<|image_pad|>"),
                         video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                         vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)


def build_model(tok, **arch) -> Qwen2VLForConditionalGeneration:
    model = Qwen2VLForConditionalGeneration(build_config(tok, **{**ARCH, **arch}))
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return model


def patchify(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images [B, C, S, S] -> (pixel_values [B * (S/p)^2, C * 2 * p * p], image_grid_thw [B, 3]) in
    `Qwen2VLImageProcessor`'s layout: per image, patches in merge-window order (h/m, w/m, m, m; m = `MERGE`),
    each C x T x p x p values, the T = 2 frames of a still image equal."""
    b, c, h, w = pixels.shape
    gh, gw = h // PATCH, w // PATCH
    x = pixels.view(b, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [B, h/m, w/m, m, m, C, p, p]
    x = x[:, :, :, :, :, :, None].expand(-1, -1, -1, -1, -1, -1, FRAMES, -1, -1)  # [..., C, T, p, p]
    rows = x.reshape(b * gh * gw, c * FRAMES * PATCH * PATCH)
    return rows, torch.tensor([[1, gh, gw]] * b)


class QwenBatcher:
    """`batcher(views)` -> dict of model inputs (input_ids, attention_mask, mm_token_type_ids, pixel_values,
    image_grid_thw) and labels (answer tokens only), left-padded; every view of one call has one size."""

    def __init__(self, tok, processor):
        self.tok = tok
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.image_id = tok.convert_tokens_to_ids("<|image_pad|>")
        self.cache: dict[tuple[str, int], list[int]] = {}

    def prompt_ids(self, question: str, n_tokens: int) -> list[int]:
        key = (question, n_tokens)
        if key not in self.cache:
            self.cache[key] = self.tok(prompt(question).replace("<|image_pad|>", "<|image_pad|>" * n_tokens))["input_ids"]
        return self.cache[key]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok(answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def pixels(self, d) -> torch.Tensor:
        return normalised_pixels(d, self.mean, self.std)

    def inputs(self, d, seqs: list[list[int]], labs: list[list[int]]) -> tuple[dict, torch.Tensor]:
        ids, mask, labels = left_pad(seqs, labs, self.tok.pad_token_id)
        rows, grid = patchify(self.pixels(d))
        inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == self.image_id).int(),
                  "pixel_values": rows, "image_grid_thw": grid}
        return inputs, labels

    def turns(self, d) -> tuple[dict, torch.Tensor, list[tuple]]:
        """`views.sample_turns` output -> (model inputs, labels, turns): one conversation per view (the image
        and the first question, then `follow_up` turns), labels on every answer; `turns` [(family, size, turn
        index)] in the order of the answers."""
        n_tokens = (d["pixels"].shape[1] // TOKEN_PX) ** 2
        follow = lambda q: self.tok(follow_up(q), add_special_tokens=False)["input_ids"]  # noqa: E731
        seqs, labs, turns = conversations(d["turns"], lambda q: self.prompt_ids(q, n_tokens), follow, self.answer_ids)
        inputs, labels = self.inputs(d, seqs, labs)
        return inputs, labels, turns

    def text(self, d) -> tuple[dict, torch.Tensor]:
        """Text-only inputs and labels: each view's words (`d["described"]`) where its image block would be."""
        seqs, labs = [], []
        block = "<|vision_start|><|image_pad|><|vision_end|>"
        for q, a, words in zip(d["questions"], d["answers"], d["described"]):
            p, t = self.tok(prompt(q).replace(block, words + "\n"))["input_ids"], self.answer_ids(a)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        ids, mask, labels = left_pad(seqs, labs, self.tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask}, labels

    def __call__(self, d) -> tuple[dict, torch.Tensor]:
        side = d["pixels"].shape[1]
        n_tokens = (side // TOKEN_PX) ** 2
        seqs, labs = [], []
        for q, a in zip(d["questions"], d["answers"]):
            p, t = self.prompt_ids(q, n_tokens), self.answer_ids(a)
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        return self.inputs(d, seqs, labs)
