#!/usr/bin/env bash
# Text -> sentencepiece tokenizer -> Megatron indexed dataset (.bin/.idx) -> a short CPU
# pretraining run of a Free Transformer with 2 ranks (TP=2). Run from the repository root:
#   bash examples/shakespeare.sh
set -euo pipefail
TEXT=${TEXT:-data/tinyshakespeare.txt}
OUT=${OUT:-runs/shakespeare}
mkdir -p "$OUT"

megatron-free-train-tokenizer --input "$TEXT" --input-format text-lines \
    --model-prefix "$OUT/tokenizer" --vocab-size 2000 --seed 1234

megatron-free-preprocess --input "$TEXT" --input-format text-lines --json-keys text \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer.model" \
    --append-eod --workers 2 --output-prefix "$OUT/shakespeare"

torchrun --nproc-per-node 2 -m megatron_free.pretrain --config examples/shakespeare.yaml \
    --tensor-model-parallel-size 2 \
    --data-path "$OUT/shakespeare_text_document" --data-cache-path "$OUT/cache" \
    --tokenizer-model "$OUT/tokenizer.model" \
    --save "$OUT/checkpoints" --load "$OUT/checkpoints" --tensorboard-dir "$OUT/tensorboard"
