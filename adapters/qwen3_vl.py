"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2-VL's layout and positions; deepstack features
are added inside the first decoder layers at the same visual positions. No default system prompt."""

from __future__ import annotations

from ._registry import register_adapter
from .qwen_vl import Qwen2VLAdapter


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    name = "qwen3_vl"
    architectures = ("Qwen3VLForConditionalGeneration",)
    model_class_name = "Qwen3VLForConditionalGeneration"
    default_layer = 16
    reference_num_layers = 36
    native_resolution = 512
    default_checkpoint = "Qwen/Qwen3-VL-8B-Instruct"
    system_prompt = None
