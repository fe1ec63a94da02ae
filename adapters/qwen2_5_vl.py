"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): Qwen2-VL's layout and positions, window attention
in the vision tower (invisible to the language model)."""

from __future__ import annotations

from ._registry import register_adapter
from .qwen_vl import Qwen2VLAdapter


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    name = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    default_layer = 12
    reference_num_layers = 28
    native_resolution = 448
    default_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
