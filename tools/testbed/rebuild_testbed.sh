#!/usr/bin/env bash
# Rebuild the shipped testbed checkpoint (laser/assets/testbed/model) from nothing: three step-driven,
# seeded runs of tools/train_testbed.py on one thread (about 85 CPU-minutes on a 2-core x86 machine).
#   bash tools/testbed/rebuild_testbed.sh [WORK_DIR]   (default testbed_work/rebuild; resumable: re-run it)
# Run 1: vision-tower pre-training, then joint training with the auxiliary vision loss and two attention
# losses: the last prompt token reads the words naming the box (layer 0, heads 2-3) and looks at the box
# (layers 1-2, heads 0-1).
# Run 2: frozen tower, reading-heavy family mix, the same attention losses on layers 1-3, stages framed
# so that the question decides (stage "q" of tools/testbed/views.py).
# Run 3: run 2's recipe continued at half the learning rate (medium and large boxes are read from the box
# the question names: pairs about two boxes of one scene answered differently >= 90% on splits 0 and 2).
# The export copies every command to laser/assets/testbed/model/training_commands.txt.
set -euo pipefail
W=${1:-testbed_work/rebuild}
FAM='{"reading": 0.55, "relational": 0.2, "existence": 0.12, "color": 0.05, "count": 0.0, "where": 0.08}'
T="python tools/train_testbed.py --seed 0 --threads 1 --batch 32 --question-attn 0.5"
$T --run "$W/run1" --export "$W/export1" --steps 3000 --vision-steps 3000 --warmup 200
$T --run "$W/run2" --init "$W/run1/last.pt" --freeze-vision --lr 1e-3 --warmup 20 \
   --steps 1500 --aux 0 --attn-aux 0.3 --attn-layers 1,2,3 --stages 0,q,1,q --eval-every 500 --families "$FAM"
$T --run "$W/run3" --init "$W/run2/last.pt" --freeze-vision --lr 5e-4 --warmup 20 \
   --steps 1500 --aux 0 --attn-aux 0.3 --attn-layers 1,2,3 --stages 0,q,1,q --eval-every 500 --families "$FAM" \
   --export laser/assets/testbed/model
