"""The method core, in the order of the paper (docs/method.md):

1. `probe` — the attention probe: last-row softmax attention over visual tokens, without eager attention;
2. `attention` — the two attention passes (with and without the question, prefix KV reused);
3. `vaq` — VAQ (Visual Activation by Query) per layer and the chosen layer l*;
4. `canvas` — the localisation map painted onto the image plane through the adapter's layout;
5. `crop` — where to zoom (Con-ViCrop window; ViCrop's multi-scale windows);
6. `views` — the focused view and the negative (counterfactual / noise) views;
7. `decoding` — direct or VAT-contrastive decoding with a KV cache;
8. `engine` — `LaserEngine`, the steps above for a batch of (image, question) pairs;
9. `scoring` — ranking given options by likelihood on the focused view instead of decoding (V* Bench).

`config` (every choice and default, `LaserConfig`), `prediction` (what an answer records), `cache`
(KV-cache plumbing) and `images` (input checking) support them. Nothing here imports `laser.run`
or `laser.report`; the only model-specific knowledge comes through `laser.adapters`.
"""
