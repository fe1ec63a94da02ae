"""Every private name of transformers and open_clip that LASER uses, in this one module, and the names
that differ between transformers versions (the KV-cache argument).

LASER calls the model through public APIs wherever they suffice. Where they do not, the private name
is used here, and only here, each behind a small function with a comment saying what it does, why the
public API is not enough, and which versions it was checked against. `tests/test_compat.py` runs every
shim on the installed versions and checks that no other module of `laser/` or `adapters/` uses these
names (`PRIVATE_NAMES`). When a transformers or open_clip upgrade breaks one, this file is the place
to fix.

Checked against transformers 5.24.0 and open_clip 3.3.0.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

# The private names of third-party objects used below; tests/test_compat.py checks that no other module
# of laser/ or adapters/ mentions them.
PRIVATE_NAMES = (
    "_attn_implementation",
    "_global_mapping",
    "_get_logits_processor",
    "_eos_token_tensor",
    "_build_vision_tower",
)


# ----------------------------------------------------------------- attention kernel routing
def attention_kernel(config: Any) -> str | None:
    """The attention kernel name (`"sdpa"`, `"eager"`, `"flash_attention_2"`, a registered name ...)
    that `config` routes its attention modules to; None where the config never chose one."""
    # `PretrainedConfig._attn_implementation` (a property over `_attn_implementation_internal`) is what
    # every attention module and mask builder reads to pick its kernel. There is no public getter:
    # `model.config.attn_implementation` is not an attribute in 5.x, and a language model's
    # attention modules hold their own (sub-)config, which need not be the model's top-level one.
    # Checked: transformers 5.24.0.
    return config._attn_implementation


def set_attention_kernel(config: Any, name: str | None) -> None:
    """Route the attention modules that read `config` to kernel `name` (registered in
    `transformers.AttentionInterface`); sub-configs of `config` follow, as transformers does."""
    # The public `PreTrainedModel.set_attn_implementation(name)` works on a whole model: it checks the
    # kernel against the model class's support flags (which know nothing of kernels registered at run
    # time, such as the probe's `laser_probe_<kernel>`), may load kernels from the hub, and sets every
    # sub-model. The probe re-routes only the language model's attention modules (the vision tower keeps
    # its own kernel) and restores them exactly afterwards, so it sets the config attribute that
    # `set_attn_implementation` itself sets. Checked: transformers 5.24.0 (the setter recurses into
    # `config.sub_configs`).
    config._attn_implementation = name


@contextmanager
def attention_kernel_as(config: Any, name: str | None) -> Iterator[None]:
    """Inside the block `config` names kernel `name`; its previous kernel name is restored on exit.

    The probe kernel runs the wrapped kernel inside this block: the config routes the layer to
    `laser_probe_<kernel>`, but a kernel that reads the config's name itself (flash attention passes
    `module.config._attn_implementation` to its kernel loader) must see its own name."""
    # Uses the same private attribute as `set_attention_kernel`; see there. Checked: transformers
    # 5.24.0 (integrations/flash_attention.py reads the name on every call).
    routed = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = routed


def mask_function_registered(name: str) -> bool:
    """True if `name` has a mask function in `ALL_MASK_ATTENTION_FUNCTIONS` as the mask builders
    look it up for a config routed to `name`."""
    # The mask builders of `transformers.masking_utils` check `config._attn_implementation in
    # ALL_MASK_ATTENTION_FUNCTIONS._global_mapping` (the class-wide registry that `register` fills)
    # before choosing a mask format; `name in ALL_MASK_ATTENTION_FUNCTIONS` would also see an
    # instance's local overrides, which that check does not. The same test is used here so that a name
    # this returns True for is one the mask builders accept. Checked: transformers 5.24.0
    # (masking_utils.py, `_preprocess_mask_arguments`).
    return name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def registered_mask_function(kernel_name: str) -> Callable[..., Any] | None:
    """The mask function registered class-wide for `kernel_name`, or None (see `mask_function_registered`)."""
    # Same registry, same reason as `mask_function_registered`. Checked: transformers 5.24.0.
    return ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(kernel_name)


# ----------------------------------------------------------------- generation
def is_generation_model(module: Any) -> bool:
    """True if `module` builds logits processors the way `model.generate` does (a `GenerationMixin`)."""
    # Detected by the builder `logits_processors_of` calls (not `isinstance(module, GenerationMixin)`):
    # what decoding needs is that method, and remote-code models may provide it without the mixin.
    # Checked: transformers 5.24.0.
    return hasattr(module, "_get_logits_processor")


def logits_processors_of(
    model: Any, config: GenerationConfig, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, eos: torch.Tensor
) -> LogitsProcessorList:
    """The processors and warpers `model.generate` applies under `config` (repetition penalty,
    temperature, top-k, top-p ...), built by transformers itself.

    model: a generation model (`is_generation_model`); prompt_ids / prompt_mask: [batch, T] left-padded
    prompt (the repetition penalty skips the padding); eos: [n_eos] end-of-sequence token ids.
    `config` is not modified."""
    # `GenerationMixin._get_logits_processor` is the builder `generate` calls; there is no public
    # function that turns a `GenerationConfig` into its `LogitsProcessorList`, and re-implementing it
    # would drift from `generate` (which processors exist, their order, their defaults). It reads
    # `generation_config._eos_token_tensor` (min-length and EOS processors), which `generate` sets in
    # its private `_prepare_special_tokens`; the copy gets it here instead. Checked: transformers 5.24.0.
    config = _with_eos_tensor(config, eos)
    return model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=prompt_ids.shape[1],
        device=prompt_ids.device,
        model_kwargs={"attention_mask": prompt_mask},
    )


def _with_eos_tensor(config: GenerationConfig, eos: torch.Tensor) -> GenerationConfig:
    """A shallow copy of `config` carrying `eos` where `generate`'s special-token preparation puts it."""
    # `GenerationConfig._eos_token_tensor`: see `logits_processors_of`. Checked: transformers 5.24.0.
    config = copy.copy(config)
    config._eos_token_tensor = eos
    return config


# ----------------------------------------------------------------- open_clip
def open_clip_vision_tower(config: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised open_clip vision tower for a model config (`open_clip.get_model_config`):
    `config["vision_cfg"]` with `config["embed_dim"]` and `config.get("quick_gelu", False)`."""
    # `open_clip.model._build_vision_tower` builds the tower alone. The public `open_clip.create_model`
    # builds the whole CLIP model (the text tower too, then thrown away: the composite checkpoint holds
    # only the vision weights) and takes no overrides of the nested `vision_cfg`. Checked: open_clip 3.3.0.
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(config["embed_dim"], config["vision_cfg"], config.get("quick_gelu", False))


# ----------------------------------------------------------------- names that differ between versions
def cache_kwarg(model: Any) -> str:
    """Name of the forward argument that takes the KV cache: `cache` from transformers 5.x,
    `past_key_values` before (and in remote-code models that kept it)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (`output.cache` from transformers 5.x, else `past_key_values`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
