"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): Qwen2-VL's layout and positions, window attention
in the vision tower (invisible to the language model).

ViCrop's reference settings for this family (its `qwen2_5_methods.py` and `run.py`, on Qwen2.5-VL-3B,
36 layers): layer 22 and a 224 px base crop box. On a model of another depth the layer is rescaled to
the same relative depth (`LaserEngine.static_layer`)."""

from __future__ import annotations

from ._registry import register_adapter
from .qwen_vl import Qwen2VLAdapter


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    name = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    default_layer = 22
    reference_num_layers = 36
    native_resolution = 448
    crop_box_side = 224
    default_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
