"""LASER inside other tools. Nothing in the core imports this package; each module needs its tool:

- `laser.integrations.lmms_eval` — the `laser` model of lmms-eval (`pip install "laser-lvlm[lmms]"`,
  then `lmms-eval --model laser --model_args pretrained=...,method=laser --tasks textvqa_val`).
"""
