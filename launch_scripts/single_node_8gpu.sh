#!/bin/bash
# One node with 8 GPUs, no slurm: a short run of the 1.5B configuration (TP 1, DP 8), on mock
# data unless DATA_PATH is set. For a first throughput and memory check on a new machine.
#   bash launch_scripts/single_node_8gpu.sh [pretrain flags, which win]
#   CONFIG=launch_scripts/configs/free_8b.yaml bash launch_scripts/single_node_8gpu.sh   # 8B, DP 4
#   LAUNCH_MODE=plan bash launch_scripts/single_node_8gpu.sh
set -euo pipefail
CONFIG=${CONFIG:-launch_scripts/configs/free_1p5b.yaml}
RUN_PREFIX=${RUN_PREFIX:-single_node_8gpu}
SWEEP_VALUE=${SWEEP_VALUE:-0.5}
TRAIN_ITERS=${TRAIN_ITERS:-100}
[[ -n "${DATA_PATH:-}" ]] || MOCK_DATA=${MOCK_DATA:-1}
# A short schedule and a small batch (every config's micro batch divides 64 / DP).
EXTRA_ARGS=(--global-batch-size 64 --lr-warmup-iters 10 --eval-interval 50 --eval-iters 2
            --save-interval 50)

# Under sbatch, $0 is slurm's copy of this script: find common.sh from the submit directory.
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/launch_scripts/common.sh"
local_launch 8 "$@"
