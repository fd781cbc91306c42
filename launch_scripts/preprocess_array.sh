#!/bin/bash
# Preprocess a corpus across many machines: slurm array task i writes shard i of N
# (megatron-free-preprocess --shard-index i --num-shards N), then one job merges the shards into
# the dataset a single run would write (megatron-free-merge-datasets, streaming). The shards are
# Megatron datasets as they are: a --data-path blend can take them without the merge. Documents get
# --append-eod. Logs go to logs/ under the submit directory (create it when submitting by hand).
#
#   INPUT='/data/fineweb/*.parquet' INPUT_FORMAT=parquet OUTPUT_PREFIX=/data/tok/fineweb \
#   TOKENIZER_MODEL=/data/tokenizer_131072.model NUM_SHARDS=64 \
#       bash launch_scripts/preprocess_array.sh submit     # sbatch the array and the merge after it
#
# or by hand:  sbatch --array=0-63 launch_scripts/preprocess_array.sh           (NUM_SHARDS = array size)
#              MERGE=1 sbatch --dependency=afterok:<array job id> launch_scripts/preprocess_array.sh
#
# Environment:
#   INPUT            files or globs, space separated (quote globs), required
#   OUTPUT_PREFIX    required; shard i writes ${OUTPUT_PREFIX}-0000i-of-000NN_${key}_document.bin/.idx,
#                    the merge ${OUTPUT_PREFIX}_${key}_document.bin/.idx
#   TOKENIZER_TYPE   default SentencePieceTokenizer;  TOKENIZER_MODEL  required for sentencepiece
#   INPUT_FORMAT     jsonl (default), text-lines, text-files, parquet, arrow
#   JSON_KEYS        keys / columns, space separated (default text)
#   NUM_SHARDS       default: the array's task count (SLURM_ARRAY_TASK_COUNT)
#   WORKERS          tokenizer processes per task (default SLURM_CPUS_PER_TASK, else nproc)
#   EXTRA_ARGS       further megatron-free-preprocess flags (e.g. --skip-bad-lines)
#   FORCE=1          redo shards that are already complete (by default a rerun or a requeue skips
#                    them: a shard's .idx appears only once its .bin is complete)
#   MERGE=1          this job merges instead (it refuses while any shard is missing)
#
#SBATCH --job-name=preprocess
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/preprocess_%A_%a.log

set -euo pipefail

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
if [[ ! -f "$REPO_DIR/tools/preprocess_data.py" ]]; then
    echo "error: $REPO_DIR is not the repository root: submit from it or set REPO_DIR" >&2
    exit 2
fi
: "${INPUT:?error: set INPUT (files or globs)}"
: "${OUTPUT_PREFIX:?error: set OUTPUT_PREFIX}"
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
INPUT_FORMAT=${INPUT_FORMAT:-jsonl}
read -r -a KEYS <<< "${JSON_KEYS:-text}"
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
read -r -a INPUTS <<< "$INPUT"  # globs stay unexpanded here: megatron-free-preprocess expands them
TOKENIZER=(--tokenizer-type "$TOKENIZER_TYPE")
if [[ -n "${TOKENIZER_MODEL:-}" ]]; then
    TOKENIZER+=(--tokenizer-model "$TOKENIZER_MODEL")
fi

if [[ "${1:-}" == "submit" ]]; then
    : "${NUM_SHARDS:?error: set NUM_SHARDS to submit}"
    mkdir -p "$REPO_DIR/logs"
    array=$(sbatch --parsable --array="0-$((NUM_SHARDS - 1))" --export=ALL "$0")
    merge=$(MERGE=1 sbatch --parsable --dependency="afterok:${array%%;*}" --export=ALL,MERGE=1 \
        --job-name=preprocess-merge "$0")
    echo "submitted shards: job ${array%%;*} (array 0-$((NUM_SHARDS - 1))), merge: job ${merge%%;*}"
    exit 0
fi

NUM_SHARDS=${NUM_SHARDS:-${SLURM_ARRAY_TASK_COUNT:-}}
: "${NUM_SHARDS:?error: set NUM_SHARDS or run as a slurm array}"
shard_prefix() {  # $1 = shard index: the prefix megatron-free-preprocess gives that shard
    printf '%s-%05d-of-%05d' "$OUTPUT_PREFIX" "$1" "$NUM_SHARDS"
}

if [[ "${MERGE:-0}" == 1 ]]; then
    for key in "${KEYS[@]}"; do
        shards=()
        for ((i = 0; i < NUM_SHARDS; i++)); do
            shards+=("$(shard_prefix "$i")_${key}_document")
        done
        python "$REPO_DIR/tools/merge_datasets.py" --input "${shards[@]}" \
            --output-prefix "${OUTPUT_PREFIX}_${key}_document"
    done
    exit 0
fi

SHARD=${SLURM_ARRAY_TASK_ID:?error: run as a slurm array task (or set SLURM_ARRAY_TASK_ID)}
if [[ "${FORCE:-0}" != 1 ]]; then
    done_keys=0
    for key in "${KEYS[@]}"; do
        [[ -f "$(shard_prefix "$SHARD")_${key}_document.idx" ]] && done_keys=$((done_keys + 1))
    done
    if ((done_keys == ${#KEYS[@]})); then
        echo "shard $SHARD of $NUM_SHARDS: already complete ($(shard_prefix "$SHARD")_*), skipped (FORCE=1 redoes it)"
        exit 0
    fi
fi
WORKERS=${WORKERS:-${SLURM_CPUS_PER_TASK:-$(nproc)}}
exec python "$REPO_DIR/tools/preprocess_data.py" --input "${INPUTS[@]}" --input-format "$INPUT_FORMAT" \
    --json-keys "${KEYS[@]}" --output-prefix "$OUTPUT_PREFIX" "${TOKENIZER[@]}" --append-eod \
    --workers "$WORKERS" --shard-index "$SHARD" --num-shards "$NUM_SHARDS" --no-progress-bar "${EXTRA[@]}"
