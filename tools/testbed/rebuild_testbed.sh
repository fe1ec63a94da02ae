#!/usr/bin/env bash
# Rebuild the shipped testbed checkpoint (laser/assets/testbed/model) from nothing: three step-driven,
# seeded runs of tools/train_testbed.py on one thread (about 85 CPU-minutes on a 2-core x86 machine).
#   bash tools/testbed/rebuild_testbed.sh [WORK_DIR]   (default testbed_work/rebuild; resumable: re-run it)
# Run 1: vision-tower pre-training, then joint training with the auxiliary vision and attention losses.
# Runs 2-3: frozen tower, reading-heavy family mix, attention loss on layers 1-2 then 1-3.
# The export copies every command to laser/assets/testbed/model/training_commands.txt.
set -euo pipefail
W=${1:-testbed_work/rebuild}
FAM='{"reading": 0.55, "relational": 0.2, "existence": 0.12, "color": 0.05, "count": 0.0, "where": 0.08}'
T="python tools/train_testbed.py --seed 0 --threads 1 --batch 32"
$T --run "$W/run1" --export "$W/export1" --steps 6000 --vision-steps 3000 --warmup 200
$T --run "$W/run2" --export "$W/export2" --init "$W/run1/last.pt" --freeze-vision --lr 2e-3 --warmup 20 \
   --steps 2500 --aux 0 --attn-aux 0.3 --stages 0,2,0,1 --families "$FAM"
$T --run "$W/run3" --init "$W/run2/last.pt" --freeze-vision --lr 5e-4 --warmup 20 \
   --steps 2500 --aux 0 --attn-aux 0.3 --attn-layers 1,2,3 --stages 0,2,0,1 --eval-every 600 --families "$FAM"
