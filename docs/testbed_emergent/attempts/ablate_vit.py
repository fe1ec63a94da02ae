"""Throwaway ablation: the original testbed architecture (CLIP 3 layers, tokens mix) with the same LM and
answer-only loss, to see whether *any* tower gets the image used within 600 steps. It patched
tools/train_emergent.py as of commit 12bcf08 (`git show 12bcf08:tools/train_emergent.py`); today that
script has this variant, pre-trained and frozen, as `--tower vit`."""
import sys

sys.path.insert(0, "tools")
import train_emergent as te
from testbed.model import build_model

te.build_emergent = lambda tok: build_model(tok, text_hidden=96, text_layers=8, vision_hidden=96, vision_layers=3)
te.fix_projector_norm = lambda m: None
te.content_only_tokens = lambda m: None
te.IMAGE_MEAN, te.IMAGE_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
te.main()
