"""The testbed LVLM: a tiny, real `LlavaForConditionalGeneration` (CLIP ViT 64 px / patch 8 -> 8x8
visual tokens, 4-layer Llama) with an offline word-level tokenizer and a `LlavaProcessor`.

`build_tokenizer()`, `build_processor()`, `build_model(tokenizer)`; `prompt(question)` is the exact
LLaVA-1.5 prompt the project's adapter sends, `answer_ids(tok, answer)` the training target.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from laser.testbed.scenes import COLOR_NAMES, INSTRUCTION, MODEL_INPUT

PATCH = 8
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
WORDS = (
    "user assistant answer the question using a single word or phrase is there box boxes what digit in "
    "left right of above below top bottom yes no color colour with how many are where which number "
    "image this an and it to at on side count shape square"
).split()
PUNCT = [":", ".", "?", ",", "!", "'", "-"]
LLAVA_CHAT_TEMPLATE = None


def prompt(question: str | None, instruction: str = INSTRUCTION) -> str:
    q = f"{question}\n" if question is not None else ""
    return f"USER: <image>\n{q}{instruction} ASSISTANT:"


def vocabulary() -> list[str]:
    words = SPECIALS + PUNCT + [str(d) for d in range(10)] + list(COLOR_NAMES) + WORDS
    out, seen = [], set()
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        padding_side="left", model_max_length=256,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def build_processor(tokenizer=None, size: int = MODEL_INPUT) -> LlavaProcessor:
    tokenizer = tokenizer or build_tokenizer()
    ip = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        do_resize=True, do_center_crop=True, resample=3, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
    )


def build_config(tokenizer, size: int = MODEL_INPUT, text_hidden: int = 128, text_layers: int = 4,
                 vision_hidden: int = 96, vision_layers: int = 3) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_hidden * 4, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=size, patch_size=PATCH, projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=text_hidden * 3,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, rope_theta=10000.0,
    )
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=(size // PATCH) ** 2,
    )
    cfg.pad_token_id = tokenizer.pad_token_id
    return cfg


def build_model(tokenizer, **kw) -> LlavaForConditionalGeneration:
    model = LlavaForConditionalGeneration(build_config(tokenizer, **kw))
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    return model


def prompt_ids(tokenizer, question: str | None, n_image_tokens: int = (MODEL_INPUT // PATCH) ** 2) -> list[int]:
    """Token ids of `prompt(question)` as the processor produces them (image token expanded)."""
    text = prompt(question).replace("<image>", "<image>" * n_image_tokens)
    return tokenizer(text)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
