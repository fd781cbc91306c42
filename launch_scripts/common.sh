# Shared by every launch script (sourced, never run): the pretrain arguments every run gets, and
# the two ways to start them: slurm_launch (one srun task per node, each starting torchrun) and
# local_launch (torchrun on this machine). A launch script sets, then calls one of the two:
#
#   CONFIG        YAML of the model and recipe (launch_scripts/configs/*.yaml), repo-relative
#   RUN_PREFIX    the run is named RUN_PREFIX_baseline or RUN_PREFIX_kappa<bits>
#   SWEEP         array of sweep values, "baseline" (--baseline) or kappa in bits (--free-bits),
#                 indexed by the slurm array task id; or SWEEP_VALUE, one value
#   TRAIN_TOKENS  the token budget: --train-samples = ceil(TRAIN_TOKENS / seq-length); or TRAIN_ITERS
#   EXTRA_ARGS    optional array of further pretrain flags (the command line of local scripts wins)
#
# Environment (all optional):
#   DATA_PATH        indexed-dataset prefix(es), "0.7 A 0.3 B" for a blend
#                    (default $DATA_ROOT/pretrain_text_document)
#   TOKENIZER_MODEL  the 2^17-piece sentencepiece model (default $DATA_ROOT/tokenizer_131072.model)
#   DATA_ROOT        default $REPO_DIR/data;  OUTPUT_ROOT  default $REPO_DIR/runs
#   MOCK_DATA=1      megatron's mock data instead (no files; throughput and smoke runs)
#   CONTAINER_IMAGE  run inside this pyxis/enroot image (a .sqsh file or docker://...); with
#   CONTAINER_MOUNTS (default: the repo, DATA_ROOT and OUTPUT_ROOT at their own paths)
#   EXIT_MARGIN_MIN  minutes before the time limit at which training saves and exits (default 20)
#   MIN_TRAIN_MIN    a job with fewer minutes than this left for training stops at once (default 10)
#   MAX_REQUEUES     stop requeueing after this many restarts (default 100)
#   LAUNCH_MODE      run (default) | print: print "world_size N" and the pretrain arguments, one
#                    per line, and exit | plan: run the planner (pretrain --dry-run) here
#
# Preemption and time limits (slurm scripts carry #SBATCH --requeue and --signal=B:USR1@300):
#   * every run saves to and resumes from $OUTPUT_ROOT/$RUN_NAME/checkpoints (--save and --load),
#     every --save-interval iterations;
#   * before the time limit: training gets --exit-duration-in-mins (time left - EXIT_MARGIN_MIN),
#     so it saves and exits 0 on its own; the batch script then requeues the job unless the
#     checkpoint has reached the planned iterations. Time-based rather than signal-based: torchrun
#     (< torch 2.11) SIGKILLs its workers 30 s after forwarding a SIGTERM, too soon to save 8B;
#   * if the job still runs 5 minutes before the limit (a slow save), the USR1 trap requeues it
#     at once: it resumes from the last complete checkpoint (saves are atomic);
#   * on preemption slurm requeues the job itself (--requeue); the workers get SIGTERM and, with
#     --exit-signal-handler, save if the grace time allows;
#   * `scancel --signal=TERM <job>` stops a run: the workers save, the job exits 0 and is not
#     requeued (sbatch the same array index again to resume);
#   * slurm holds a requeued job for 2 minutes (its BeginTime) before it starts it again.

set -euo pipefail

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
if [[ ! -f "$REPO_DIR/launch_scripts/common.sh" ]]; then
    echo "error: $REPO_DIR is not the repository root: submit from it (cd <repo>; sbatch launch_scripts/...) or set REPO_DIR" >&2
    exit 1
fi
DATA_ROOT=${DATA_ROOT:-$REPO_DIR/data}
OUTPUT_ROOT=${OUTPUT_ROOT:-$REPO_DIR/runs}
LAUNCH_MODE=${LAUNCH_MODE:-run}

# Every process of every node: megatron needs one CUDA connection for TP/SP communication to
# overlap with compute in issue order; unbuffered logs; and torchrun >= 2.11 waits this long for
# workers to save after a SIGTERM (older torchrun ignores it).
export CUDA_DEVICE_MAX_CONNECTIONS=1
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
export PYTHONUNBUFFERED=1
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}

die() { echo "error: $*" >&2; exit 1; }

# The value of `#SBATCH --NAME=VALUE` (or `--NAME VALUE`) in a script.
sbatch_option() {
    sed -nE "s/^#SBATCH[[:space:]]+--$1[=[:space:]]+([^[:space:]]+).*/\1/p" "$2" | tail -n 1
}

# A top-level `key: value` of a YAML config (comments stripped).
yaml_value() {
    sed -nE "s/^$1:[[:space:]]*([^[:space:]#]+).*/\1/p" "$2" | tail -n 1
}

# Fills RUN_NAME, RUN_DIR and PRETRAIN_ARGS from the variables above.
build_pretrain_args() {
    [[ -n "${CONFIG:-}" && -f "$REPO_DIR/$CONFIG" ]] || die "CONFIG=${CONFIG:-} is not a file under $REPO_DIR"
    local config="$REPO_DIR/$CONFIG"

    local value=${SWEEP_VALUE:-}
    if [[ -z "$value" ]]; then
        [[ -n "${SWEEP+x}" ]] || die "set SWEEP (an array) or SWEEP_VALUE"
        local task=${SLURM_ARRAY_TASK_ID:-0}
        local last=${SLURM_ARRAY_TASK_MAX:-$task}
        (( last < ${#SWEEP[@]} )) || die "array task $last has no value: SWEEP has ${#SWEEP[@]} (${SWEEP[*]})"
        value=${SWEEP[$task]}
    fi
    local latent_args
    if [[ "$value" == baseline ]]; then
        RUN_NAME="${RUN_PREFIX}_baseline"
        latent_args=(--baseline)
    else
        [[ "$value" =~ ^[0-9]*\.?[0-9]+$ ]] || die "sweep value '$value' is neither 'baseline' nor kappa in bits"
        RUN_NAME="${RUN_PREFIX}_kappa${value}"
        latent_args=(--free-bits "$value")
    fi
    RUN_DIR="$OUTPUT_ROOT/$RUN_NAME"

    local length_args
    if [[ -n "${TRAIN_TOKENS:-}" ]]; then
        local seq_length
        seq_length=$(yaml_value seq-length "$config")
        [[ -n "$seq_length" ]] || die "$CONFIG sets no seq-length"
        length_args=(--train-samples $(( (TRAIN_TOKENS + seq_length - 1) / seq_length )))
    else
        [[ -n "${TRAIN_ITERS:-}" ]] || die "set TRAIN_TOKENS or TRAIN_ITERS"
        length_args=(--train-iters "$TRAIN_ITERS")
    fi

    local data_args
    if [[ "${MOCK_DATA:-0}" == 1 ]]; then
        data_args=(--mock-data)
    elif [[ "${DATA_SOURCE:-}" == config ]]; then
        data_args=()  # the config names its data (the toy task)
    else
        local data_path
        read -ra data_path <<< "${DATA_PATH:-$DATA_ROOT/pretrain_text_document}"
        data_args=(--data-path "${data_path[@]}"
                   --tokenizer-type SentencePieceTokenizer
                   --tokenizer-model "${TOKENIZER_MODEL:-$DATA_ROOT/tokenizer_131072.model}"
                   --data-cache-path "$OUTPUT_ROOT/data_cache")
    fi

    # Resume, as Megatron-LM's scripts do: --load = --save (a first run finds no checkpoint there
    # and starts fresh; a run on checkpoints it does not load is refused).
    local checkpoints="$RUN_DIR/checkpoints"

    PRETRAIN_ARGS=(--config "$config" "${latent_args[@]}" "${length_args[@]}" "${data_args[@]}"
                   --save "$checkpoints" --load "$checkpoints" --tensorboard-dir "$RUN_DIR/tensorboard"
                   ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
}

# LAUNCH_MODE=plan: the planner for one run (SWEEP_VALUE or SLURM_ARRAY_TASK_ID given), or for
# every run of the sweep in turn, then one summary line per run.
plan_sweep() {
    local world=$1
    if [[ -n "${SWEEP_VALUE:-}" || -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        (cd "$REPO_DIR" && python -m megatron_free.pretrain "${PRETRAIN_ARGS[@]}" --dry-run --world-size "$world")
        return
    fi
    local task summary=() output
    for task in "${!SWEEP[@]}"; do
        SLURM_ARRAY_TASK_ID=$task build_pretrain_args
        echo "=== array task $task: $RUN_NAME ==="
        output=$(cd "$REPO_DIR" && python -m megatron_free.pretrain "${PRETRAIN_ARGS[@]}" --dry-run --world-size "$world") \
            || { echo "$output"; die "the planner rejects $RUN_NAME (array task $task)"; }
        echo "$output"
        summary+=("$(printf '%-28s %s' "$RUN_NAME" "$(sed -nE 's/^  peak ([0-9.]+ GiB).*/\1,/p; s/^  total +(.*[^ ]) +[0-9.]+[KMBT]? tokens$/\1/p' <<< "$output" | paste -sd' ')")")
    done
    echo "=== the sweep: ${#SWEEP[@]} runs of $world GPUs each (peak memory per GPU, wall time) ==="
    printf '%s\n' "${summary[@]}"
}

print_args() {  # LAUNCH_MODE=print: what the launcher would run
    echo "world_size $1"
    shift
    printf '%s\n' "${PRETRAIN_ARGS[@]}" "$@"
}

# Minutes left before the job's time limit, to the second (empty if unlimited).
minutes_left() {
    local left days=0 h=0 m=0 s=0
    left=$(squeue -h -j "$SLURM_JOB_ID" -o %L)
    [[ "$left" =~ ^[0-9] ]] || return 0
    if [[ "$left" == *-* ]]; then days=${left%%-*}; left=${left#*-}; fi
    IFS=: read -ra parts <<< "$left"
    case ${#parts[@]} in
        3) h=${parts[0]}; m=${parts[1]}; s=${parts[2]} ;;
        2) m=${parts[0]}; s=${parts[1]} ;;
        1) s=${parts[0]} ;;
    esac
    awk -v seconds=$(( ((10#$days * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$s )) 'BEGIN { print seconds / 60 }'
}

# Slurm: one srun task per node, each running torchrun over that node's GPUs; c10d rendezvous
# at the first node. The calling script's #SBATCH lines give the size outside slurm (print, plan).
slurm_launch() {
    local script="$0"
    local nodes=${SLURM_JOB_NUM_NODES:-$(sbatch_option nodes "$script")}
    local gpus=${SLURM_GPUS_ON_NODE:-$(sbatch_option gpus-per-node "$script")}
    [[ -n "$nodes" && -n "$gpus" ]] || die "$script needs #SBATCH --nodes and --gpus-per-node"
    local world=$(( nodes * gpus ))
    build_pretrain_args
    case "$LAUNCH_MODE" in
        print) print_args "$world"; return ;;
        plan) plan_sweep "$world"; return ;;
        run) ;;
        *) die "LAUNCH_MODE=$LAUNCH_MODE: expected run, print or plan" ;;
    esac
    [[ -n "${SLURM_JOB_ID:-}" ]] || die "not inside a slurm job: sbatch $script (or LAUNCH_MODE=plan bash $script)"

    local container_args=()
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        container_args=(--container-image="$CONTAINER_IMAGE"
                        --container-mounts="${CONTAINER_MOUNTS:-$REPO_DIR:$REPO_DIR,$DATA_ROOT:$DATA_ROOT,$OUTPUT_ROOT:$OUTPUT_ROOT}"
                        --container-workdir="$REPO_DIR")
    fi
    mkdir -p "$RUN_DIR"
    local master_addr
    master_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    local master_port=${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}

    local margin=${EXIT_MARGIN_MIN:-20} least=${MIN_TRAIN_MIN:-10} left exit_args=()
    [[ "$margin" =~ ^[0-9]*\.?[0-9]+$ && "$least" =~ ^[0-9]*\.?[0-9]+$ ]] \
        || die "EXIT_MARGIN_MIN=$margin, MIN_TRAIN_MIN=$least: expected minutes (e.g. 20 or 0.5)"
    left=$(minutes_left)
    if [[ -n "$left" ]]; then
        awk -v left="$left" -v margin="$margin" -v least="$least" 'BEGIN { exit !(left - margin > least) }' \
            || die "only $left minutes left in the job, less than EXIT_MARGIN_MIN $margin + MIN_TRAIN_MIN $least: raise --time"
        exit_args=(--exit-duration-in-mins "$(awk -v left="$left" -v margin="$margin" 'BEGIN { print left - margin }')")
    fi

    # Preflight on one node: validate the layout for this world size and learn the iterations.
    local plan_output train_iters
    plan_output=$(srun --nodes=1 --ntasks=1 "${container_args[@]}" \
        python -m megatron_free.pretrain "${PRETRAIN_ARGS[@]}" --dry-run --world-size "$world") \
        || { echo "$plan_output"; die "the planner rejects this run"; }
    echo "$plan_output"
    train_iters=$(sed -nE 's/^plan: ok train_iters=([0-9]+).*/\1/p' <<< "$plan_output")
    echo "run $RUN_NAME: $nodes nodes x $gpus GPUs, restart ${SLURM_RESTART_COUNT:-0}:" \
        "${PRETRAIN_ARGS[*]} ${exit_args[*]}"

    local requeued=0
    requeue() {
        if (( ${SLURM_RESTART_COUNT:-0} >= ${MAX_REQUEUES:-100} )); then
            echo "not requeueing: restarted ${SLURM_RESTART_COUNT} times (MAX_REQUEUES)"
            return
        fi
        requeued=1
        echo "requeueing job $SLURM_JOB_ID ($1)"
        scontrol requeue "$SLURM_JOB_ID"
    }
    trap 'requeue "5 minutes before the time limit"' USR1

    # torchrun exits 1 after a SIGTERM (scancel --signal=TERM) even when its workers saved and
    # exited 0: run it so that a signal it is sent becomes its exit status, 128 + the signal.
    local torchrun=(python -c 'import runpy, sys
from torch.distributed.elastic.multiprocessing.api import SignalException
try:
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
except SignalException as e:
    sys.exit(128 + e.sigval)')
    # srun does not pass the allocation's CPUs on to a step's task: give the node's to torchrun.
    srun --nodes="$nodes" --ntasks-per-node=1 ${SLURM_CPUS_ON_NODE:+--cpus-per-task=$SLURM_CPUS_ON_NODE} \
        --kill-on-bad-exit=1 "${container_args[@]}" \
        "${torchrun[@]}" --nnodes="$nodes" --nproc-per-node="$gpus" \
            --rdzv-backend=c10d --rdzv-endpoint="$master_addr:$master_port" --rdzv-id="$SLURM_JOB_ID" \
            --max-restarts=0 -m megatron_free.pretrain "${PRETRAIN_ARGS[@]}" "${exit_args[@]}" &
    local srun_pid=$! rc=0
    # `wait` returns early when a trapped signal arrives: wait again until srun has exited.
    while true; do
        wait "$srun_pid" && rc=0 || rc=$?
        kill -0 "$srun_pid" 2>/dev/null || break
    done
    (( requeued )) && return 0
    local done_iters
    done_iters=$(cat "$RUN_DIR/checkpoints/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0)
    if (( rc == 128 + 15 )); then  # SIGTERM: --exit-signal-handler saved; a stop, not a failure
        echo "run $RUN_NAME stopped by SIGTERM, checkpoint at iteration $done_iters: not requeueing (sbatch again to resume)"
        return 0
    fi
    if (( rc != 0 )); then
        echo "training failed (exit $rc): not requeueing"
        return "$rc"
    fi
    if [[ -n "$train_iters" ]] && (( done_iters < train_iters )); then
        requeue "checkpoint at iteration $done_iters of $train_iters"
    else
        echo "run $RUN_NAME finished at iteration $done_iters"
    fi
}

# One machine: torchrun over NPROC local processes; further arguments go to pretrain.
local_launch() {
    local nproc=$1
    shift
    build_pretrain_args
    case "$LAUNCH_MODE" in
        print) print_args "$nproc" "$@"; return ;;
        plan) (cd "$REPO_DIR" && python -m megatron_free.pretrain "${PRETRAIN_ARGS[@]}" "$@" --dry-run --world-size "$nproc"); return ;;
        run) ;;
        *) die "LAUNCH_MODE=$LAUNCH_MODE: expected run, print or plan" ;;
    esac
    mkdir -p "$RUN_DIR"
    (cd "$REPO_DIR" && python -m torch.distributed.run --standalone --nproc-per-node="$nproc" \
        -m megatron_free.pretrain "${PRETRAIN_ARGS[@]}" "$@")
}
