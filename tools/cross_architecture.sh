#!/usr/bin/env bash
# The cross-architecture report, from nothing but the shipped trained testbed models:
#   bash tools/cross_architecture.sh [OUT]        (default: docs/cross_architecture)
# For every shipped model (MODELS, default: testbed testbed_emergent testbed_qwen; one not shipped is
# skipped with a line saying so): tools/testbed_table.py on the shipped split (every question; PER_CELL=N:
# N per family x size cell) with vanilla, laser, laser_static, vicrop and oracle_tight, each method a
# run folder. A Qwen2-VL model also runs vanilla and laser at 128x128 pixels (`max_pixels=16384`, 16x16 visual
# tokens instead of 8x8): "look at more pixels" next to "look closer" on one model. Then `laser compare
# --html` over all of them: accuracy per architecture and method with intervals, VAQ per layer on the
# relative-depth axis (a panel per model), the chosen-layer histogram and the decode paths, and the
# browsable report (OUT/compare/index.html).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/cross_architecture}"
models="${MODELS:-testbed testbed_emergent testbed_qwen}"
per_cell="${PER_CELL:-}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
start=$(date +%s)
runs=()
for model in $models; do
  folder="laser/assets/${model}/model"
  if [ ! -f "$folder/config.json" ]; then
    echo "skipped ${model}: no checkpoint in ${folder}"
    continue
  fi
  python tools/testbed_table.py --model "$model" ${per_cell:+--per-cell "$per_cell"} \
    --methods vanilla laser laser_static vicrop oracle_tight --out "$out/$model"
  runs+=("$out/$model"/runs/*)
  if grep -q '"model_type": "qwen2_vl"' "$folder/config.json"; then
    python tools/testbed_table.py --model "$model" ${per_cell:+--per-cell "$per_cell"} --processor max_pixels=16384 \
      --methods vanilla laser --out "$out/${model}_128px"
    runs+=("$out/${model}_128px"/runs/*)
  fi
done
laser compare "${runs[@]}" --out "$out/compare" --html
echo "cross-architecture report in $out/compare (index.html) after $(( $(date +%s) - start )) s"
