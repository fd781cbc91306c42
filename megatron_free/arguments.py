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


class ArgumentParser(argparse.ArgumentParser):
    """argparse's usage errors raise ArgumentError: main() prints them as its one error line, once
    per job under torchrun, exit code 2."""

    def error(self, message):
        raise ArgumentError(f"{message} (see --help)")


class HelpFormatter(argparse.HelpFormatter):
    """Appends each flag's default to its help, unless the help already explains it; a default of
    None (derived or unset: the help says what happens) or an off switch shows none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from megatron_free.data.tokenizers import TOKENIZER_TYPES

    p = ArgumentParser(
        prog="megatron-free-pretrain",
        usage="%(prog)s [--config YAML] [--flag value ...]   (torchrun ... -m megatron_free.pretrain ...)",
        description="Pretrain a Free Transformer (or its baseline) on megatron-core. Flags follow "
        "Megatron-LM's; a --config YAML file may set any of them (keys as the flag "
        "without dashes) and the command line overrides it.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", metavar="YAML", help="YAML file of flag values; the command line overrides it")

    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, default=8, help="Number of transformer layers.")
    g.add_argument("--hidden-size", type=int, default=256, help="Transformer hidden size.")
    g.add_argument(
        "--ffn-hidden-size",
        type=int,
        default=None,
        help="Transformer Feed-Forward Network hidden size (default: 4 x --hidden-size).",
    )
    g.add_argument("--num-attention-heads", type=int, default=8, help="Number of transformer attention heads.")
    g.add_argument("--group-query-attention", action="store_true", help="Use group-query attention.")
    g.add_argument(
        "--num-query-groups",
        type=int,
        default=None,
        help="Number of key/value head groups with --group-query-attention "
        "(default: --num-attention-heads, i.e. multi-head attention).",
    )
    g.add_argument(
        "--kv-channels",
        type=int,
        default=None,
        help="Projection weights dimension in multi-head attention (default: --hidden-size / --num-attention-heads).",
    )
    g.add_argument("--seq-length", type=int, default=256, help="Maximum sequence length to process.")
    g.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="Maximum number of position embeddings to use (default: --seq-length).",
    )
    g.add_argument("--rotary-base", type=int, default=10000, help="Base to use for rotary positional embeddings.")
    g.add_argument("--norm-epsilon", type=float, default=1e-5, help="Epsilon for RMS norm.")
    g.add_argument(
        "--init-method-std",
        type=float,
        default=0.02,
        help="Standard deviation of the zero mean normal distribution used for weight initialization.",
    )
    g.add_argument(
        "--untie-embeddings-and-output-weights", action="store_true", help="Untie embeddings and output weights."
    )
    g.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="Pad the vocab size to be divisible by this value (times the tensor-parallel size), "
        "for computational efficiency.",
    )
    g.add_argument(
        "--transformer-impl",
        choices=("local", "transformer_engine"),
        default=None,
        help="Which Transformer implementation to use (default: transformer_engine with a GPU, local otherwise).",
    )
    g.add_argument(
        "--recompute-granularity",
        choices=("full", "selective"),
        default=None,
        help="Recompute activations in the backward pass to train larger models, sequences and "
        "batches: full recomputes whole transformer layers (see --recompute-method), "
        "selective the core attention (default: no recompute).",
    )
    g.add_argument(
        "--recompute-method",
        choices=("uniform", "block"),
        default=None,
        help="With --recompute-granularity full: uniform divides the layers into chunks of "
        "--recompute-num-layers and recomputes each chunk's input; block recomputes the "
        "first --recompute-num-layers layers of each pipeline stage.",
    )
    g.add_argument(
        "--recompute-num-layers",
        type=int,
        default=None,
        help="uniform: layers per recomputed chunk; block: layers recomputed per pipeline stage "
        "(default: 1 with --recompute-granularity full).",
    )

    g = p.add_argument_group("Free Transformer")
    g.add_argument(
        "--baseline", action="store_true", help="Train the plain decoder through the same code (no encoder, no latent)."
    )
    g.add_argument(
        "--latent-bits",
        type=int,
        default=16,
        help="H: bits of the latent Z per token, which takes 2^H values (1 to 24).",
    )
    g.add_argument(
        "--free-bits",
        type=float,
        default=0.5,
        help="kappa: KL budget per token, in bits, below which the KL term is not penalized.",
    )
    g.add_argument(
        "--injection-layer",
        type=int,
        default=None,
        help="1-based decoder block that receives Z (default: --num-layers / 2 + 1).",
    )
    g.add_argument(
        "--mapper-chunk-size",
        type=int,
        default=4096,
        help="Codes per chunk in the binary mapper's post-sampler: memory against speed, same results.",
    )

    g = p.add_argument_group("precision")
    g.add_argument("--bf16", action="store_true", help="Run model in bfloat16 mode (default: float32).")
    g.add_argument("--fp16", action="store_true", help="Run model in fp16 mode.")
    g.add_argument(
        "--fp8-format",
        choices=("hybrid", "e4m3"),
        default=None,
        help="Which fp8 format scheme to use for FP8 tensors in the forward and backward pass: "
        "e4m3 everywhere, or hybrid (e4m3 forward, e5m2 backward); needs --bf16 and "
        "Transformer Engine (default: no FP8).",
    )
    g.add_argument(
        "--fp8-recipe",
        choices=("delayed", "tensorwise", "mxfp8", "blockwise"),
        default="delayed",
        help="Which fp8 recipe to use for FP8 tensors in the forward and backward pass.",
    )
    g.add_argument(
        "--fp8-amax-history-len",
        type=int,
        default=1024,
        help="Number of steps for which amax history is recorded per tensor (delayed recipe).",
    )
    g.add_argument(
        "--fp8-amax-compute-algo",
        choices=("max", "most_recent"),
        default="max",
        help="Algorithm for computing amax from history (delayed recipe).",
    )
    g.add_argument("--fp8-margin", type=int, default=0, help="Scaling margin for fp8.")

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="Degree of tensor model parallelism.")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="Degree of pipeline model parallelism.")
    g.add_argument(
        "--decoder-first-pipeline-num-layers",
        type=int,
        default=None,
        help="The number of transformer layers on the first pipeline stage (default: an even split across the stages).",
    )
    g.add_argument(
        "--decoder-last-pipeline-num-layers",
        type=int,
        default=None,
        help="The number of transformer layers on the last pipeline stage (default: an even split across the stages).",
    )
    g.add_argument("--context-parallel-size", type=int, default=1, help="Degree of context parallelism.")
    g.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="Enable sequence parallel optimization (needs --tensor-model-parallel-size > 1).",
    )
    g.add_argument(
        "--use-distributed-optimizer",
        action="store_true",
        help="Use distributed optimizer (optimizer state sharded over data-parallel ranks).",
    )
    g.add_argument("--overlap-grad-reduce", action="store_true", help="If set, overlap DDP grad reduce.")
    g.add_argument(
        "--overlap-param-gather", action="store_true", help="If set, overlap param all-gather in distributed optimizer."
    )
    g.add_argument("--distributed-timeout-minutes", type=int, default=10, help="Timeout minutes for torch.distributed.")

    g = p.add_argument_group("training")
    g.add_argument(
        "--micro-batch-size",
        type=int,
        default=4,
        help="Batch size per model instance (local batch size). Global batch size is local batch "
        "size times data parallel size times number of micro batches.",
    )
    g.add_argument(
        "--global-batch-size",
        type=int,
        default=None,
        help="Training batch size, a multiple of --micro-batch-size times the data-parallel size "
        "(default: --micro-batch-size x data-parallel size, one micro batch per iteration).",
    )
    g.add_argument(
        "--train-iters",
        type=int,
        default=None,
        help="Total number of iterations to train over all training runs; give this or --train-samples.",
    )
    g.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help="Total number of samples to train over all training runs; give this or --train-iters.",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=1234,
        help="Random seed used for python, numpy, pytorch, the data order and the latents.",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=3e-4,
        help="Initial learning rate. Depending on decay style and initial warmup, the learning "
        "rate at each iteration would be different.",
    )
    g.add_argument(
        "--min-lr",
        type=float,
        default=0.0,
        help="Minimum value for learning rate. The scheduler clips values below this threshold.",
    )
    g.add_argument(
        "--lr-decay-style",
        choices=("constant", "linear", "cosine", "inverse-square-root", "WSD"),
        default="cosine",
        help="Learning rate decay function.",
    )
    g.add_argument(
        "--lr-warmup-iters", type=int, default=0, help="Number of iterations to linearly warmup learning rate over."
    )
    g.add_argument(
        "--lr-warmup-fraction",
        type=float,
        default=None,
        help="Fraction of --lr-decay-iters to use for warmup, instead of --lr-warmup-iters.",
    )
    g.add_argument(
        "--lr-decay-iters",
        type=int,
        default=None,
        help="Number of iterations to decay learning rate over (default: --train-iters).",
    )
    g.add_argument("--weight-decay", type=float, default=0.1, help="Weight decay coefficient for L2 regularization.")
    g.add_argument(
        "--adam-beta1",
        type=float,
        default=0.9,
        help="First coefficient for computing running averages of gradient and its square.",
    )
    g.add_argument(
        "--adam-beta2",
        type=float,
        default=0.95,
        help="Second coefficient for computing running averages of gradient and its square.",
    )
    g.add_argument(
        "--adam-eps", type=float, default=1e-8, help="Term added to the denominator to improve numerical stability."
    )
    g.add_argument("--clip-grad", type=float, default=1.0, help="Gradient clipping based on global L2 norm.")
    g.add_argument(
        "--max-skipped-iterations",
        type=int,
        default=10,
        help="Stop (exit code 3) after this many iterations in a row with a non-finite loss or "
        "grad norm; each such iteration skips its update.",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--data-path",
        nargs="*",
        default=None,
        help="Prefixes of indexed datasets (megatron-free-preprocess's outputs), optionally "
        "weighted: 0.7 A 0.3 B; split according to --split.",
    )
    g.add_argument(
        "--split",
        default="969,30,1",
        help="Comma-separated list of proportions for training, validation, and test split.",
    )
    g.add_argument(
        "--data-cache-path",
        default=None,
        help="Path to a directory to hold cached index files (default: a cache folder next to the data).",
    )
    g.add_argument(
        "--mock-data",
        action="store_true",
        help="Train on random tokens instead of a dataset (needs --vocab-size or --tokenizer-type).",
    )
    g.add_argument(
        "--toy-data",
        action="store_true",
        help="Train on the paper's toy task, made on the fly (tokenizer: CharacterTokenizer unless --tokenizer-type).",
    )
    g.add_argument(
        "--tokenizer-type",
        default=None,
        choices=list(TOKENIZER_TYPES),
        metavar="NAME",
        help=f"What type of tokenizer to use: {', '.join(TOKENIZER_TYPES)} (needed with --data-path).",
    )
    g.add_argument(
        "--tokenizer-model",
        default=None,
        help="Sentencepiece tokenizer model, or a local HuggingFace tokenizer folder.",
    )
    g.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="Size of vocab before padding, for --mock-data without a tokenizer.",
    )
    g.add_argument("--num-workers", type=int, default=0, help="Dataloader number of workers.")

    g = p.add_argument_group("checkpointing")
    g.add_argument(
        "--save",
        default=None,
        help="Output directory to save checkpoints to (default: no saving). One run at a time "
        "(it holds <save>/run.lock); a run is refused if the directory holds checkpoints "
        "it does not resume from: give --load of the same directory to resume, or another "
        "--save (or delete it) to start over.",
    )
    g.add_argument(
        "--load",
        default=None,
        help="Directory containing a model checkpoint: a --save directory (its latest "
        "checkpoint) or one iter_ directory. One without a checkpoint yet (a first run's "
        "--save) starts training from scratch.",
    )
    g.add_argument(
        "--save-interval",
        type=int,
        default=None,
        help="Number of iterations between persistent checkpoint saves (default: save only at the end of training).",
    )
    g.add_argument(
        "--keep-last-checkpoints",
        type=int,
        default=None,
        metavar="N",
        help="After each save, delete all but the N newest checkpoints under --save "
        "(default: keep every one, as Megatron-LM).",
    )
    g.add_argument("--no-save-optim", action="store_true", help="Do not save current optimizer.")
    g.add_argument("--no-save-rng", action="store_true", help="Do not save current rng state.")
    g.add_argument("--no-load-optim", action="store_true", help="Do not load optimizer when loading checkpoint.")
    g.add_argument("--no-load-rng", action="store_true", help="Do not load rng state when loading checkpoint.")
    g.add_argument(
        "--finetune",
        action="store_true",
        help="Load model for finetuning: weights only; iteration, optimizer and scheduler start afresh.",
    )
    g.add_argument(
        "--init-from-baseline",
        default=None,
        help="Initialize the Free Transformer's decoder from a baseline checkpoint directory.",
    )
    g.add_argument(
        "--ckpt-format",
        choices=("torch_dist",),
        default="torch_dist",
        help="Checkpoint format to use: megatron-core's distributed checkpointing format.",
    )
    g.add_argument(
        "--override-opt_param-scheduler",
        action="store_true",
        help="On --load, take the learning-rate schedule from this run's flags and ignore the checkpoint's.",
    )
    g.add_argument(
        "--use-checkpoint-opt_param-scheduler",
        action="store_true",
        help="On --load, take the learning-rate schedule from the checkpoint and ignore this run's flags.",
    )
    g.add_argument(
        "--exit-signal-handler",
        action="store_true",
        help="On SIGTERM, finish the iteration, save the checkpoint and exit 0.",
    )
    g.add_argument(
        "--exit-interval",
        type=int,
        default=None,
        help="Exit the program after the iteration is divisible by this value.",
    )
    g.add_argument(
        "--exit-duration-in-mins", type=float, default=None, help="Exit the program after this many minutes."
    )

    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--log-interval", type=int, default=10, help="Report loss and timing interval.")
    g.add_argument(
        "--eval-interval",
        type=int,
        default=None,
        help="Interval between running evaluation on validation set (default: no evaluation).",
    )
    g.add_argument(
        "--eval-iters", type=int, default=10, help="Number of iterations to run for evaluation on the validation set."
    )
    g.add_argument(
        "--eval-latent-samples",
        type=int,
        default=4,
        metavar="K",
        help="Free Transformer validation: posterior samples of Z per sequence for the "
        "importance-weighted estimate of -log P(S) ('iwae lm loss', comparable with a "
        "baseline's lm loss); 0 skips it (K - 1 forward passes more than the posterior's).",
    )
    g.add_argument(
        "--tensorboard-dir", default=None, help="Write TensorBoard logs to this directory (default: none written)."
    )
    g.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="Peak dense TFLOP/s per device for the MFU in the logs "
        "(default: 989, H100 bf16, on a GPU; no MFU on CPU).",
    )
    g.add_argument(
        "--assumed-mfu",
        type=float,
        default=0.4,
        help="With --dry-run: model FLOPs utilization assumed for the wall-time estimate.",
    )
    g.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=80.0,
        help="With --dry-run: GPU memory (GiB); a plan estimated above it is an error.",
    )
    g.add_argument(
        "--generate-samples",
        type=int,
        default=0,
        help="With --toy-data, at the end: print this many samples for a shared and for independent Z (0: none).",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate the configuration, print the plan (sizes, memory, time) and exit.",
    )
    g.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="With --dry-run: the world size to plan for (default: the launched one).",
    )
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


def _check_uneven_pipeline(layers: int, pp: int, first: int | None, last: int | None) -> None:
    """One-line errors for --decoder-first/last-pipeline-num-layers (megatron only asserts)."""
    if first is None and last is None:
        return
    if pp == 1:
        raise ArgumentError(
            "--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers "
            "need --pipeline-model-parallel-size > 1"
        )
    for flag, value in (("--decoder-first-pipeline-num-layers", first), ("--decoder-last-pipeline-num-layers", last)):
        if value is not None and not 1 <= value < layers:
            raise ArgumentError(f"{flag} {value} must be in [1, --num-layers {layers})")
    middle_stages = pp - (first is not None) - (last is not None)
    middle_layers = layers - (first or 0) - (last or 0)
    if middle_stages == 0 and middle_layers != 0:
        raise ArgumentError(
            f"--decoder-first-pipeline-num-layers {first} + --decoder-last-pipeline-num-layers "
            f"{last} must equal --num-layers {layers} with --pipeline-model-parallel-size {pp}"
        )
    if middle_stages > 0 and (middle_layers < middle_stages or middle_layers % middle_stages):
        raise ArgumentError(
            f"the {middle_layers} layers left by --decoder-first-pipeline-num-layers {first} / "
            f"--decoder-last-pipeline-num-layers {last} do not divide over the {middle_stages} "
            f"other stages of --pipeline-model-parallel-size {pp} (--num-layers {layers})"
        )


def validate_args(args: argparse.Namespace, world_size: int) -> None:
    """Fills derived defaults (as Megatron does) and rejects bad values with the flags named."""
    from megatron_free.parallel.distributed import ParallelConfig, ParallelSizeError

    def need(condition, message):
        if not condition:
            raise ArgumentError(message)

    for flag in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "micro_batch_size"):
        need(getattr(args, flag) > 0, f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    need(
        args.hidden_size % args.num_attention_heads == 0 or args.kv_channels,
        f"--num-attention-heads {args.num_attention_heads} does not divide --hidden-size {args.hidden_size}",
    )
    if args.ffn_hidden_size is None:
        args.ffn_hidden_size = 4 * args.hidden_size
    if args.num_query_groups is None or not args.group_query_attention:
        need(
            not (args.num_query_groups and not args.group_query_attention),
            "--num-query-groups needs --group-query-attention",
        )
        args.num_query_groups = args.num_attention_heads
    need(
        args.num_attention_heads % args.num_query_groups == 0,
        f"--num-query-groups {args.num_query_groups} does not divide --num-attention-heads {args.num_attention_heads}",
    )
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    need(
        args.max_position_embeddings >= args.seq_length,
        f"--max-position-embeddings {args.max_position_embeddings} < --seq-length {args.seq_length}",
    )
    if args.transformer_impl is None:
        import torch

        args.transformer_impl = "transformer_engine" if torch.cuda.is_available() else "local"
    need(not (args.bf16 and args.fp16), "--bf16 and --fp16 are exclusive")
    need(
        args.fp8_format is None or args.transformer_impl == "transformer_engine",
        "--fp8-format needs --transformer-impl transformer_engine",
    )
    need(args.fp8_format is None or args.bf16, "--fp8-format needs --bf16 (FP8 GEMMs, bf16 elsewhere)")

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    try:
        parallel = ParallelConfig(tp, pp, args.context_parallel_size, args.sequence_parallel)
        args.data_parallel_size = parallel.data_parallel_size(world_size)
    except ParallelSizeError as e:
        raise ArgumentError(str(e)) from None
    need(
        args.num_attention_heads % tp == 0,
        f"--tensor-model-parallel-size {tp} does not divide --num-attention-heads {args.num_attention_heads}",
    )
    need(
        args.num_query_groups % tp == 0,
        f"--tensor-model-parallel-size {tp} does not divide --num-query-groups {args.num_query_groups}",
    )
    need(
        args.ffn_hidden_size % tp == 0,
        f"--tensor-model-parallel-size {tp} does not divide --ffn-hidden-size {args.ffn_hidden_size}",
    )
    need(
        not args.sequence_parallel or args.seq_length % tp == 0,
        f"--sequence-parallel needs --tensor-model-parallel-size {tp} to divide --seq-length {args.seq_length}",
    )
    uneven = args.decoder_first_pipeline_num_layers is not None or args.decoder_last_pipeline_num_layers is not None
    if pp > 1 and not uneven:
        need(
            args.num_layers % pp == 0,
            f"--pipeline-model-parallel-size {pp} does not divide --num-layers {args.num_layers}",
        )
    if args.injection_layer is None:
        args.injection_layer = args.num_layers // 2 + 1
    # The latent's own settings (--latent-bits, --free-bits, --injection-layer, 2^H over TP) are checked
    # by FreeTransformerConfig, which every run, --dry-run and inference builds; the stage that starts at
    # --injection-layer by model.validate_injection_boundary (it needs megatron's layer split).
    _check_uneven_pipeline(
        args.num_layers, pp, args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers
    )

    dp = args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    need(
        args.global_batch_size % (args.micro_batch_size * dp) == 0,
        f"--global-batch-size {args.global_batch_size} is not a multiple of --micro-batch-size "
        f"{args.micro_batch_size} x data-parallel size {dp}",
    )
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    need(
        (args.train_iters is None) != (args.train_samples is None),
        "give exactly one of --train-iters and --train-samples",
    )
    if args.train_iters is None:
        args.train_iters = math.ceil(args.train_samples / args.global_batch_size)
    need(args.train_iters > 0, f"--train-iters must be > 0, got {args.train_iters}")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_fraction is not None:
        need(args.lr_warmup_iters == 0, "--lr-warmup-fraction and --lr-warmup-iters are exclusive")
        args.lr_warmup_iters = int(args.lr_warmup_fraction * args.lr_decay_iters)
    need(
        args.lr_warmup_iters < args.lr_decay_iters,
        f"--lr-warmup-iters {args.lr_warmup_iters} must be < --lr-decay-iters {args.lr_decay_iters} "
        f"(default: --train-iters)",
    )
    need(0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr} must be in [0, --lr {args.lr}]")
    need(
        args.use_distributed_optimizer or not args.overlap_param_gather,
        "--overlap-param-gather needs --use-distributed-optimizer",
    )
    if args.recompute_granularity == "full":
        need(args.recompute_method is not None, "--recompute-granularity full needs --recompute-method uniform|block")
        if args.recompute_num_layers is None:
            args.recompute_num_layers = 1

    sources = [bool(args.data_path), args.mock_data, args.toy_data]
    need(sum(sources) == 1, "give exactly one of --data-path, --mock-data and --toy-data")
    if args.data_path:
        need(args.tokenizer_type is not None, "--data-path needs --tokenizer-type")
    if args.mock_data:
        need(args.vocab_size is not None or args.tokenizer_type, "--mock-data needs --vocab-size or --tokenizer-type")
    if args.toy_data and args.tokenizer_type is None:
        args.tokenizer_type = "CharacterTokenizer"  # one token per character of the toy task
    if args.save_interval is not None:
        need(args.save is not None, "--save-interval needs --save")
    if args.keep_last_checkpoints is not None:
        need(args.save is not None, "--keep-last-checkpoints needs --save")
        need(args.keep_last_checkpoints >= 1, f"--keep-last-checkpoints must be >= 1, got {args.keep_last_checkpoints}")
    need(
        not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
        "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are exclusive",
    )
    if args.init_from_baseline:
        need(not args.baseline, "--init-from-baseline initializes a Free Transformer: drop --baseline")
    if args.eval_interval is not None:
        need(args.eval_interval > 0, f"--eval-interval must be > 0, got {args.eval_interval}")
    need(args.eval_latent_samples >= 0, f"--eval-latent-samples must be >= 0, got {args.eval_latent_samples}")
