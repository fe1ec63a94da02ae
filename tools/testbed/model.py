"""The testbed LVLM: a tiny, real `LlavaForConditionalGeneration` (CLIP ViT 64 px / patch 8 -> 8x8
visual tokens, 4-layer Llama) with an offline word-level tokenizer and a `LlavaProcessor`.

`build_tokenizer()`, `build_processor()`, `build_model(tokenizer)`; `prompt(question)` is the exact
LLaVA-1.5 prompt the project's adapter sends, `answer_ids(tok, answer)` the training target.
"""

from __future__ import annotations

from tiny_lvlm import llava_config, llava_processor, word_tokenizer  # tools/tiny_lvlm.py
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from laser.testbed.scenes import COLOR_NAMES, INSTRUCTION, MODEL_INPUT

PATCH = 8
WORDS = (
    "user assistant answer the question using a single word or phrase is there box boxes what digit in "
    "left right of above below top bottom yes no color colour with how many are where which number "
    "image this an and it to at on side count shape square write general description"
).split()
PUNCT = [":", ".", "?", ",", "!", "'", "-"]


# the adapter's `template` for each prompt order (`model.template` in a preset; adapters/_common.py)
TEMPLATES = {
    "image-first": "USER: {images}{question}{instruction} ASSISTANT:",  # LLaVA-1.5's
    "question-first": "USER: {question}{images}{instruction} ASSISTANT:",
}

# a later turn of a conversation about the same image (LLaVA-1.5's multi-turn format)
FOLLOW_UP = "USER: {question}\n" + INSTRUCTION + " ASSISTANT:"


def prompt(question: str | None, instruction: str = INSTRUCTION, order: str = "image-first") -> str:
    """The prompt the project's LLaVA adapter sends with `template=TEMPLATES[order]`."""
    q = f"{question}\n" if question is not None else ""
    return TEMPLATES[order].format(images="<image>\n", question=q, instruction=instruction)


def vocabulary() -> list[str]:
    """The words after `tiny_lvlm.SPECIAL` (ids 0-4): punctuation, digits, colour names, prompt words."""
    words = PUNCT + [str(d) for d in range(10)] + list(COLOR_NAMES) + WORDS
    return list(dict.fromkeys(words))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-casing word-level tokenizer over the special tokens then `vocabulary()`, `<s>` prepended,
    left padding (the shipped checkpoint's `tokenizer.json`)."""
    return word_tokenizer(vocabulary(), n_filler=0, lowercase=True, bos=True, model_max_length=256)


def build_processor(tokenizer=None, size: int = MODEL_INPUT) -> LlavaProcessor:
    return llava_processor(tokenizer or build_tokenizer(), size, PATCH)


def build_config(tokenizer, size: int = MODEL_INPUT, text_hidden: int = 128, text_layers: int = 4,
                 vision_hidden: int = 96, vision_layers: int = 3) -> LlavaConfig:
    cfg = llava_config(
        tokenizer, image_size=size, patch_size=PATCH, vision_hidden=vision_hidden,
        vision_intermediate=vision_hidden * 4, vision_layers=vision_layers, vision_heads=4, feature_layer=-1,
        text_hidden=text_hidden, text_intermediate=text_hidden * 3, text_layers=text_layers, heads=4,
        kv_heads=4, max_positions=256, image_seq_length=(size // PATCH) ** 2,
    )
    cfg.pad_token_id = tokenizer.pad_token_id
    return cfg


def build_model(tokenizer, **kw) -> LlavaForConditionalGeneration:
    model = LlavaForConditionalGeneration(build_config(tokenizer, **kw))
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    return model


def prompt_ids(tokenizer, question: str | None, n_image_tokens: int = (MODEL_INPUT // PATCH) ** 2,
               order: str = "image-first") -> list[int]:
    """Token ids of `prompt(question, order=order)` as the processor produces them (image token expanded)."""
    text = prompt(question, order=order).replace("<image>", "<image>" * n_image_tokens)
    return tokenizer(text)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
