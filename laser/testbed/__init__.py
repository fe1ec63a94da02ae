"""LASER testbed: a fine-detail benchmark (coloured boxes with digits, `scenes`, `split`) and a tiny
real LLaVA (`model`) trained (`data`, tools/train_testbed.py) to read digits only when they are large."""
