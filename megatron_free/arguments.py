"""Command-line arguments: Megatron-LM's flag names wherever Megatron has the flag, plus the Free
Transformer's own (--baseline, --latent-bits, --free-bits, --injection-layer).

A --config YAML file may set any flag (keys as the flag without dashes, '-' or '_'); the command
line overrides it. Invalid values or combinations raise ArgumentError with a one-line message
naming the flags.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

import yaml


class ArgumentError(ValueError):
    """A bad flag value or combination; the message names the flags."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="megatron-free-pretrain",
        description="Pretrain a Free Transformer (or its baseline) on megatron-core.",
    )
    p.add_argument("--config", help="YAML file of flag values; the command line overrides it")

    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, default=8)
    g.add_argument("--hidden-size", type=int, default=256)
    g.add_argument("--ffn-hidden-size", type=int, default=None, help="default: 4 x hidden size")
    g.add_argument("--num-attention-heads", type=int, default=8)
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=int, default=None)
    g.add_argument("--kv-channels", type=int, default=None)
    g.add_argument("--seq-length", type=int, default=256)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--rotary-base", type=int, default=10000)
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--transformer-impl", choices=("local", "transformer_engine"), default=None,
                   help="default: transformer_engine with a GPU, local otherwise")
    g.add_argument("--recompute-granularity", choices=("full", "selective"), default=None)
    g.add_argument("--recompute-method", choices=("uniform", "block"), default=None)
    g.add_argument("--recompute-num-layers", type=int, default=None)

    g = p.add_argument_group("Free Transformer")
    g.add_argument("--baseline", action="store_true",
                   help="train the plain decoder through the same code (no encoder, no latent)")
    g.add_argument("--latent-bits", type=int, default=16, help="H: bits of Z per token")
    g.add_argument("--free-bits", type=float, default=0.5, help="kappa, in bits per token")
    g.add_argument("--injection-layer", type=int, default=None,
                   help="1-based decoder block that receives Z (default L/2+1)")
    g.add_argument("--mapper-chunk-size", type=int, default=4096)

    g = p.add_argument_group("precision")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--fp8-format", choices=("hybrid", "e4m3"), default=None)
    g.add_argument("--fp8-recipe", choices=("delayed", "tensorwise", "mxfp8", "blockwise"),
                   default="delayed")
    g.add_argument("--fp8-amax-history-len", type=int, default=1024)
    g.add_argument("--fp8-amax-compute-algo", choices=("max", "most_recent"), default="max")
    g.add_argument("--fp8-margin", type=int, default=0)

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--decoder-first-pipeline-num-layers", type=int, default=None)
    g.add_argument("--decoder-last-pipeline-num-layers", type=int, default=None)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10)

    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=4)
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="default: micro batch x data-parallel size")
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--train-samples", type=int, default=None)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=("constant", "linear", "cosine", "inverse-square-root", "WSD"),
                   default="cosine")
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--max-skipped-iterations", type=int, default=10,
                   help="stop after this many iterations in a row with a non-finite loss or grad norm")

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="prefixes of indexed datasets, optionally weighted: 0.7 A 0.3 B")
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--mock-data", action="store_true")
    g.add_argument("--toy-data", action="store_true", help="the paper's toy task, made on the fly")
    g.add_argument("--tokenizer-type", default=None)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="for --mock-data")
    g.add_argument("--num-workers", type=int, default=0)

    g = p.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--keep-last-checkpoints", type=int, default=None, metavar="N",
                   help="after each save, delete all but the N newest checkpoints under --save "
                        "(default: keep every one, as Megatron-LM)")
    g.add_argument("--no-save-optim", action="store_true")
    g.add_argument("--no-save-rng", action="store_true")
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true",
                   help="load weights only; reset iteration, optimizer and scheduler")
    g.add_argument("--init-from-baseline", default=None,
                   help="initialize the Free Transformer's decoder from a baseline checkpoint dir")
    g.add_argument("--ckpt-format", choices=("torch_dist",), default="torch_dist")
    g.add_argument("--override-opt_param-scheduler", action="store_true",
                   help="on --load, keep this run's LR schedule instead of the checkpoint's")
    g.add_argument("--use-checkpoint-opt_param-scheduler", action="store_true",
                   help="on --load, take the LR schedule from the checkpoint")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM finish the iteration, save, exit 0")
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--exit-duration-in-mins", type=float, default=None)

    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--eval-interval", type=int, default=None)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense TFLOP/s per device for MFU (default: 989, H100 bf16, on GPU)")
    g.add_argument("--assumed-mfu", type=float, default=0.4,
                   help="with --dry-run: model FLOPs utilization assumed for the wall-time estimate")
    g.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="with --dry-run: GPU memory (GiB); a plan estimated above it is an error")
    g.add_argument("--generate-samples", type=int, default=0,
                   help="at the end, print this many samples for a shared and for independent Z")
    g.add_argument("--dry-run", action="store_true",
                   help="validate the configuration, print the plan (sizes, memory, time), exit")
    g.add_argument("--world-size", type=int, default=None,
                   help="with --dry-run: the world size to plan for (default: the launched one)")
    return p


def _yaml_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ArgumentError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ArgumentError(f"--config {path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(values, dict):
        raise ArgumentError(f"--config {path}: must be a mapping of flag names to values")
    known = {a.dest for a in parser._actions}
    defaults = {}
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in known or dest == "config":
            raise ArgumentError(f"--config {path}: unknown flag {key!r}")
        defaults[dest] = value
    return defaults


def parse_args(argv: Optional[Sequence[str]] = None, world_size: int = 1) -> argparse.Namespace:
    """Parses and validates; ``world_size`` is the number of launched processes."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**_yaml_defaults(parser, pre.config))
    args = parser.parse_args(argv)
    validate_args(args, args.world_size or world_size)
    return args


def validate_args(args: argparse.Namespace, world_size: int) -> None:
    """Fills derived defaults (as Megatron does) and rejects bad values with the flags named."""
    from megatron_free.parallel.distributed import ParallelConfig, ParallelSizeError

    def need(condition, message):
        if not condition:
            raise ArgumentError(message)

    for flag in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "micro_batch_size"):
        need(getattr(args, flag) > 0, f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    need(args.hidden_size % args.num_attention_heads == 0 or args.kv_channels,
         f"--num-attention-heads {args.num_attention_heads} does not divide --hidden-size {args.hidden_size}")
    if args.ffn_hidden_size is None:
        args.ffn_hidden_size = 4 * args.hidden_size
    if args.num_query_groups is None or not args.group_query_attention:
        need(not (args.num_query_groups and not args.group_query_attention),
             "--num-query-groups needs --group-query-attention")
        args.num_query_groups = args.num_attention_heads
    need(args.num_attention_heads % args.num_query_groups == 0,
         f"--num-query-groups {args.num_query_groups} does not divide "
         f"--num-attention-heads {args.num_attention_heads}")
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    need(args.max_position_embeddings >= args.seq_length,
         f"--max-position-embeddings {args.max_position_embeddings} < --seq-length {args.seq_length}")
    if args.transformer_impl is None:
        import torch

        args.transformer_impl = "transformer_engine" if torch.cuda.is_available() else "local"
    need(not (args.bf16 and args.fp16), "--bf16 and --fp16 are exclusive")
    need(args.fp8_format is None or args.transformer_impl == "transformer_engine",
         "--fp8-format needs --transformer-impl transformer_engine")
    need(args.fp8_format is None or args.bf16, "--fp8-format needs --bf16 (FP8 GEMMs, bf16 elsewhere)")

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    try:
        parallel = ParallelConfig(tp, pp, args.context_parallel_size, args.sequence_parallel)
        args.data_parallel_size = parallel.data_parallel_size(world_size)
    except ParallelSizeError as e:
        raise ArgumentError(str(e)) from None
    need(args.num_attention_heads % tp == 0,
         f"--tensor-model-parallel-size {tp} does not divide --num-attention-heads {args.num_attention_heads}")
    need(args.num_query_groups % tp == 0,
         f"--tensor-model-parallel-size {tp} does not divide --num-query-groups {args.num_query_groups}")
    need(args.ffn_hidden_size % tp == 0,
         f"--tensor-model-parallel-size {tp} does not divide --ffn-hidden-size {args.ffn_hidden_size}")
    need(not args.sequence_parallel or args.seq_length % tp == 0,
         f"--sequence-parallel needs --tensor-model-parallel-size {tp} to divide --seq-length {args.seq_length}")
    uneven = args.decoder_first_pipeline_num_layers is not None or args.decoder_last_pipeline_num_layers is not None
    if pp > 1 and not uneven:
        need(args.num_layers % pp == 0,
             f"--pipeline-model-parallel-size {pp} does not divide --num-layers {args.num_layers}")
    if args.injection_layer is None:
        args.injection_layer = args.num_layers // 2 + 1
    if not args.baseline:
        need(1 <= args.latent_bits <= 24, f"--latent-bits must be in [1, 24], got {args.latent_bits}")
        need(2 ** args.latent_bits % tp == 0,
             f"--tensor-model-parallel-size {tp} does not divide the 2^--latent-bits post-sampler rows")
        need(args.free_bits >= 0, f"--free-bits must be >= 0, got {args.free_bits}")
        need(2 <= args.injection_layer <= args.num_layers,
             f"--injection-layer {args.injection_layer} must be in [2, --num-layers {args.num_layers}]")

    dp = args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    need(args.global_batch_size % (args.micro_batch_size * dp) == 0,
         f"--global-batch-size {args.global_batch_size} is not a multiple of --micro-batch-size "
         f"{args.micro_batch_size} x data-parallel size {dp}")
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    need((args.train_iters is None) != (args.train_samples is None),
         "give exactly one of --train-iters and --train-samples")
    if args.train_iters is None:
        args.train_iters = math.ceil(args.train_samples / args.global_batch_size)
    need(args.train_iters > 0, f"--train-iters must be > 0, got {args.train_iters}")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_fraction is not None:
        need(args.lr_warmup_iters == 0, "--lr-warmup-fraction and --lr-warmup-iters are exclusive")
        args.lr_warmup_iters = int(args.lr_warmup_fraction * args.lr_decay_iters)
    need(args.lr_warmup_iters < args.lr_decay_iters,
         f"--lr-warmup-iters {args.lr_warmup_iters} must be < --lr-decay-iters {args.lr_decay_iters} "
         f"(default: --train-iters)")
    need(0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr} must be in [0, --lr {args.lr}]")
    need(args.use_distributed_optimizer or not args.overlap_param_gather,
         "--overlap-param-gather needs --use-distributed-optimizer")
    if args.recompute_granularity == "full":
        need(args.recompute_method is not None,
             "--recompute-granularity full needs --recompute-method uniform|block")
        if args.recompute_num_layers is None:
            args.recompute_num_layers = 1

    sources = [bool(args.data_path), args.mock_data, args.toy_data]
    need(sum(sources) == 1, "give exactly one of --data-path, --mock-data and --toy-data")
    if args.data_path:
        need(args.tokenizer_type is not None, "--data-path needs --tokenizer-type")
    if args.mock_data:
        need(args.vocab_size is not None or args.tokenizer_type, "--mock-data needs --vocab-size or --tokenizer-type")
    if args.save_interval is not None:
        need(args.save is not None, "--save-interval needs --save")
    if args.keep_last_checkpoints is not None:
        need(args.save is not None, "--keep-last-checkpoints needs --save")
        need(args.keep_last_checkpoints >= 1,
             f"--keep-last-checkpoints must be >= 1, got {args.keep_last_checkpoints}")
    need(not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
         "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are exclusive")
    if args.init_from_baseline:
        need(not args.baseline, "--init-from-baseline initializes a Free Transformer: drop --baseline")
    if args.eval_interval is not None:
        need(args.eval_interval > 0, f"--eval-interval must be > 0, got {args.eval_interval}")
