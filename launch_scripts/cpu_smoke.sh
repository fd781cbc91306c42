#!/bin/bash
# CPU smoke test of the launch path: the toy-task Free Transformer (examples/toy_free_transformer.yaml,
# TP 2) on 2 CPU processes under torchrun: a 20-iteration run that stops, saves and exits 0 after
# 10 (as a job reaching its time limit does), then a second launch that resumes from the
# checkpoint and finishes, as the requeued job does. About a minute on 2 cores.
#   bash launch_scripts/cpu_smoke.sh
set -euo pipefail
CONFIG=examples/toy_free_transformer.yaml
RUN_PREFIX=cpu_smoke
SWEEP_VALUE=1
DATA_SOURCE=config
TRAIN_ITERS=20
EXTRA_ARGS=(--lr-warmup-iters 2 --log-interval 5 --eval-interval 10
            --eval-iters 1 --save-interval 10 --generate-samples 0)

# Under sbatch, $0 is slurm's copy of this script: find common.sh from the submit directory.
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/launch_scripts/common.sh"
if [[ "$LAUNCH_MODE" == run ]]; then
    rm -rf "${OUTPUT_ROOT:?}/${RUN_PREFIX}_kappa${SWEEP_VALUE}"  # start fresh every time
    local_launch 2 --exit-interval 10    # saves at iteration 10 and exits 0
    local_launch 2                       # finds the checkpoint: --load, iterations 11..20
    grep -qx 20 "$OUTPUT_ROOT/${RUN_PREFIX}_kappa${SWEEP_VALUE}/checkpoints/latest_checkpointed_iteration.txt"
    echo "cpu smoke: ok (trained, saved, resumed to iteration 20)"
else
    local_launch 2
fi
