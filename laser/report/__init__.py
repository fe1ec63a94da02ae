"""Reports over prediction runs: `laser compare` (tables and figures across runs) and `laser show`
(one sample's heatmap, crop, counterfactual mask and VAQ per layer).

Modules: `runs` (loading run folders and labelling them), `tables` (scores, bootstrap intervals,
paired differences to vanilla; Markdown and CSV), `figures` (VAQ per layer, chosen layer, decode
paths), `overlay` (`render_overlay`, the one-sample picture), `compare` and `show` (the commands).
Everything draws with matplotlib's Agg backend: no display is needed.
"""
