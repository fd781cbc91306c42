"""Dry-run planner: checks a run's parallel layout against its world size and estimates its
parameters, FLOPs, tokens, memory per GPU and wall time, without a GPU or process groups.

    python -m megatron_free.pretrain --config launch_scripts/configs/free_8b.yaml \\
        --train-samples 122070313 --mock-data --dry-run --world-size 256
    LAUNCH_MODE=plan bash launch_scripts/free_8b_1t.sh        # the same, with a script's arguments

``plan(args)`` returns the numbers as a dict (and raises ArgumentError naming the flags when a
size does not divide, the injection layer does not start a pipeline stage, or the estimated
memory exceeds --gpu-memory-gb); ``print_plan(args)`` prints them as a table. ``args`` is what
``megatron_free.arguments.parse_args`` returns.

Memory model (per GPU, the largest pipeline stage; an estimate, expect +-15 %):
  * weights 2 B/param (bf16), gradients 4 B/param (DDP reduces in fp32), optimizer 12 B/param
    (fp32 master copy, Adam m and v) divided by DP x CP with --use-distributed-optimizer,
    FP8 weight copies 1 B/param for the weight and 1 B for its transpose (Transformer Engine
    caches both across microbatches) on every FP8 GEMM's weight;
  * activations after Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models"), rewritten for this layer: flash attention (no s x s tensor, so
    selective recompute of core attention saves nothing), no dropout, GQA, unfused SwiGLU;
    under sequence parallelism every saved tensor is 1/TP; 1F1B keeps min(PP - stage, number of
    microbatches) microbatches in flight on a stage; full recompute keeps each checkpointed
    input and rebuilds one group of layers at a time;
  * the last stage's fp32 softmax of the logits (vocabulary-parallel cross-entropy), the
    latent's extra activations (encoder block, the two split-input layers' stacked inputs) and
    the binary mapper's backward (fp32 [T, chunk] blocks, the dense post-sampler gradient);
  * OVERHEAD_GIB for the CUDA context, NCCL and cuBLAS workspaces and allocator fragmentation.
"""

from __future__ import annotations

import math
import os

from megatron_free.arguments import ArgumentError
from megatron_free.training.flops import (
    ModelShape,
    block_parameters,
    latent_parameters,
    model_shape,
    parameter_counts,
    training_flops_per_token,
)

GIB = 2**30
H100_BF16_DENSE_TFLOPS = 989.0
DEFAULT_ASSUMED_MFU = 0.4
DEFAULT_GPU_MEMORY_GIB = 80.0
OVERHEAD_GIB = 4.0


# ----------------------------------------------------------------------------- vocabulary


def padded_vocab(args) -> tuple[int, int, str]:
    """(vocabulary, padded vocabulary, where the vocabulary came from), as pretrain pads it.

    The tokenizer is read when it can be (it is what the run will use); a dry run on a machine
    without the tokenizer file falls back to --vocab-size.
    """
    from megatron_free.data.tokenizers import build_tokenizer, vocab_size_with_padding

    vocab, source = None, None
    tokenizer_type = args.tokenizer_type or ("CharacterTokenizer" if args.toy_data else None)
    readable = args.tokenizer_model is None or os.path.exists(args.tokenizer_model)
    if tokenizer_type and readable:
        try:
            vocab = build_tokenizer(tokenizer_type, args.tokenizer_model).vocab_size
            source = f"--tokenizer-type {tokenizer_type}"
        except ValueError as e:
            raise ArgumentError(str(e)) from None
    elif args.vocab_size is not None:
        vocab, source = args.vocab_size, "--vocab-size"
    if vocab is None:
        raise ArgumentError(
            f"--dry-run needs the vocabulary size: --tokenizer-model {args.tokenizer_model} is not "
            f"readable here; give --vocab-size"
        )
    padded = vocab_size_with_padding(vocab, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
    return vocab, padded, source


# ----------------------------------------------------------------------------- pipeline stages


def pipeline_stages(args) -> list[tuple[int, int]]:
    """[first, last) 0-based decoder layers of each pipeline stage, from the model's own
    FreeTransformerConfig and megatron-core's layer split (no process group needed); raises
    ArgumentError if --injection-layer does not start a stage."""
    from megatron_free.config import ConfigError
    from megatron_free.model.model import stage_layer_ranges, validate_injection_boundary
    from megatron_free.run_config import model_description, training_model_config

    try:
        # The layer split does not depend on the vocabulary.
        config = training_model_config(args, model_description(args, vocab_size=0, padded_vocab_size=0))
        validate_injection_boundary(config)
        return stage_layer_ranges(config)
    except ConfigError as e:
        raise ArgumentError(str(e)) from None
    except (ValueError, AssertionError) as e:
        raise ArgumentError(f"megatron-core rejects the model configuration: {e}") from None


# ----------------------------------------------------------------------------- memory


def _activation_bytes_per_token(s: ModelShape, tp: int, sp: bool) -> dict:
    """Bytes kept for the backward per token (bf16): one decoder block, the extra of a
    split-input block (encoder, block L/2+1), the last stage's logits and final norm."""
    h, kv, ffn = s.hidden_size, s.kv_size, s.ffn_hidden_size
    seq_split = tp if sp else 1  # tensors in the sequence-parallel region
    block = (
        # block input and attention-norm output, MLP input and MLP-norm output
        8 * h / seq_split
        # QKV projection output (V is a view of it), RoPE'd Q and K, attention output
        + (2 * (h + 2 * kv) + 2 * h + 2 * kv + 2 * h) / tp
        # SwiGLU: gate/up output, silu(gate), product (the down projection's input)
        + (4 * ffn + 2 * ffn + 2 * ffn) / tp
    )
    # q and kv inputs stacked along the batch: the second input and its norm output, and the
    # second half of the QKV projection output.
    split_input_extra = 4 * h / seq_split + 2 * (h + 2 * kv) / tp
    return {
        "block": block,
        "split_input_extra": split_input_extra,
        # bit logits (fp32, gathered over the sequence) and the sampled codes (int64)
        "latent_small": 2 * 4 * s.latent_bits + 8,
        "final_norm": 4 * h / seq_split,
        # vocabulary-parallel cross-entropy: fp32 logits / softmax kept, bf16 logits transient
        "logits": 6 * s.vocab_size / tp,
        "checkpointed_input": 2 * h / seq_split,
    }


def _mapper_backward_bytes(s: ModelShape, tp: int, tokens: int, chunk_size: int) -> float:
    """Peak extra memory of the binary mapper's backward (BinaryMapperPostSampler): the fp32
    gradient of R over the whole (gathered) sequence, two fp32 [T, chunk] blocks, an fp32
    copy of the chunk's post-sampler rows, and the dense bf16 gradient of this rank's rows."""
    rows = 2**s.latent_bits // tp
    chunk = min(chunk_size, rows)
    h = s.hidden_size
    return 4 * tokens * h + 2 * 4 * tokens * chunk + 4 * chunk * h + 2 * rows * h


def _stage_parameters(s: ModelShape, tp: int, pp: int, stage: int, layers: int, holds_latent: bool) -> dict:
    """Parameters held by one GPU of a pipeline stage, split by what they cost in FP8."""
    block = block_parameters(s)
    latent = latent_parameters(s)
    vocab_shard = s.vocab_size * s.hidden_size // tp
    first, last = stage == 0, stage == pp - 1
    embedding = vocab_shard if first else 0
    # Tied embeddings under PP: the last stage keeps a copy of the word embeddings for the
    # output layer (megatron all-reduces its gradient with the first stage's).
    output = vocab_shard if last and (not s.tied_embeddings or pp > 1) else 0
    fp8_gemm = layers * block["sharded"] // tp
    other = layers * block["replicated"] + (s.hidden_size if last else 0)  # + the final norm
    if holds_latent:
        fp8_gemm += latent["sharded"] // tp
        other += latent["replicated"] + latent["post_sampler"] // tp
    total = embedding + output + fp8_gemm + other
    return {"total": total, "fp8_gemm": fp8_gemm, "embedding": embedding, "output": output}


def _stage_memory(args, s: ModelShape, stage: int, layer_range: tuple[int, int], holds_latent: bool) -> dict:
    """Bytes per GPU on one pipeline stage, by part."""
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size)
    layers = layer_range[1] - layer_range[0]
    params = _stage_parameters(s, tp, pp, stage, layers, holds_latent)
    low_precision = args.bf16 or args.fp16
    optimizer_shards = args.data_parallel_size * cp if args.use_distributed_optimizer else 1
    memory = {
        "weights": params["total"] * (2 if low_precision else 4),
        "gradients": params["total"] * 4,  # fp32 DDP buffers (grad_reduce_in_fp32)
        # fp32 master + Adam m, v (bf16/fp16); Adam m, v on the fp32 weights otherwise
        "optimizer": params["total"] * (12 if low_precision else 8) / optimizer_shards,
        "fp8_weights": params["fp8_gemm"] * 2 if args.fp8_format else 0,
    }

    tokens = args.micro_batch_size * args.seq_length // cp  # per microbatch on this GPU
    per_token = _activation_bytes_per_token(s, tp, args.sequence_parallel)
    if args.recompute_granularity == "full":
        group = min(args.recompute_num_layers, layers)
        if args.recompute_method == "uniform":
            stored = math.ceil(layers / max(group, 1)) * per_token["checkpointed_input"]
            rebuilt = group * per_token["block"]
        else:  # block: the first `group` layers are checkpointed one by one
            stored = group * per_token["checkpointed_input"] + (layers - group) * per_token["block"]
            rebuilt = per_token["block"] if group else 0
    else:
        stored, rebuilt = layers * per_token["block"], 0
    if holds_latent:
        stored += per_token["block"] + 2 * per_token["split_input_extra"] + per_token["latent_small"]
    last = stage == pp - 1
    if last:
        stored += per_token["final_norm"] + per_token["logits"]
    in_flight = min(pp - stage, args.num_microbatches) if pp > 1 else 1
    memory["activations"] = tokens * (stored * in_flight + rebuilt)
    memory["mapper_backward"] = _mapper_backward_bytes(s, tp, tokens, args.mapper_chunk_size) if holds_latent else 0
    memory["overhead"] = OVERHEAD_GIB * GIB
    memory["total"] = sum(memory.values())
    memory.update(
        stage=stage,
        layers=layer_range,
        in_flight=in_flight,
        parameters=params["total"],
        embedding=params["embedding"] > 0,
        output_layer=last,
        latent=holds_latent,
    )
    return memory


# ----------------------------------------------------------------------------- the plan


def build_plan(args) -> dict:
    """Every number of the plan; raises ArgumentError for a layout that cannot run (but not
    for memory: see check_plan)."""
    from megatron_free.run_config import model_description

    world_size = (
        args.data_parallel_size
        * args.tensor_model_parallel_size
        * args.pipeline_model_parallel_size
        * args.context_parallel_size
    )
    vocab, padded, vocab_source = padded_vocab(args)
    shape = model_shape(model_description(args, vocab, padded), args.seq_length)
    stages = pipeline_stages(args)
    injection_index = args.injection_layer - 1
    stage_memory = [
        _stage_memory(args, shape, i, r, not args.baseline and r[0] <= injection_index < r[1])
        for i, r in enumerate(stages)
    ]

    flops = training_flops_per_token(shape)
    tokens_per_iteration = args.global_batch_size * args.seq_length
    total_tokens = args.train_iters * tokens_per_iteration
    peak_tflops = args.peak_tflops or H100_BF16_DENSE_TFLOPS
    mfu = getattr(args, "assumed_mfu", None) or DEFAULT_ASSUMED_MFU
    seconds = total_tokens * flops["total"] / (world_size * peak_tflops * 1e12 * mfu)
    return {
        "model": "baseline" if args.baseline else "free_transformer",
        "layout": {
            "world_size": world_size,
            "tp": args.tensor_model_parallel_size,
            "pp": args.pipeline_model_parallel_size,
            "cp": args.context_parallel_size,
            "dp": args.data_parallel_size,
            "sequence_parallel": args.sequence_parallel,
            "distributed_optimizer": args.use_distributed_optimizer,
            "stages": stages,
            "injection_layer": None if args.baseline else args.injection_layer,
            "recompute": _recompute_label(args),
            "precision": (
                "fp8 " + args.fp8_format + " + bf16"
                if args.fp8_format
                else "bf16"
                if args.bf16
                else "fp16"
                if args.fp16
                else "fp32"
            ),
        },
        "vocab": {"size": vocab, "padded": padded, "source": vocab_source},
        "parameters": parameter_counts(shape),
        "flops_per_token": flops,
        "batch": {
            "micro_batch_size": args.micro_batch_size,
            "num_microbatches": args.num_microbatches,
            "global_batch_size": args.global_batch_size,
            "seq_length": args.seq_length,
            "tokens_per_iteration": tokens_per_iteration,
        },
        "tokens": {"train_iters": args.train_iters, "train_samples": args.train_samples, "total": total_tokens},
        "memory": {
            "stages": stage_memory,
            "peak": max(stage_memory, key=lambda m: m["total"]),
            "limit_gib": getattr(args, "gpu_memory_gb", None) or DEFAULT_GPU_MEMORY_GIB,
        },
        "time": {
            "peak_tflops": peak_tflops,
            "mfu": mfu,
            "seconds": seconds,
            "seconds_per_iteration": seconds / args.train_iters,
            "tokens_per_second_per_gpu": total_tokens / seconds / world_size,
        },
    }


def _recompute_label(args) -> str:
    if args.recompute_granularity == "full":
        return f"full ({args.recompute_method}, {args.recompute_num_layers} layer(s))"
    if args.recompute_granularity == "selective":
        return "selective (core attention)"
    return "none"


def check_plan(result: dict) -> None:
    """Raises ArgumentError if the estimated memory exceeds the GPU's."""
    memory = result["memory"]
    peak = memory["peak"]
    if peak["total"] > memory["limit_gib"] * GIB:
        raise ArgumentError(
            f"estimated {peak['total'] / GIB:.1f} GiB per GPU on pipeline stage {peak['stage'] + 1} "
            f"exceeds --gpu-memory-gb {memory['limit_gib']:g}: lower --micro-batch-size, raise "
            f"--tensor-model-parallel-size / --pipeline-model-parallel-size, or use "
            f"--recompute-granularity full"
        )


def plan(args) -> dict:
    """The plan of a parsed, validated run; raises ArgumentError (naming the flags) if it
    cannot run as given."""
    result = build_plan(args)
    check_plan(result)
    return result


# ----------------------------------------------------------------------------- printing


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days ({hours:.0f} h)"


def format_plan(result: dict) -> str:
    layout, batch, tokens = result["layout"], result["batch"], result["tokens"]
    params, flops, vocab = result["parameters"], result["flops_per_token"], result["vocab"]
    memory, timing = result["memory"], result["time"]
    lines = []

    def row(label, value, note=""):
        lines.append(f"  {label:<26}{value:>14}  {note}".rstrip())

    lines.append(f"plan: {'baseline decoder' if result['model'] == 'baseline' else 'Free Transformer'}")
    lines.append("layout")
    extras = [
        x
        for x in (
            layout["sequence_parallel"] and "sequence parallel",
            layout["distributed_optimizer"] and "distributed optimizer",
        )
        if x
    ]
    row(
        "world size",
        layout["world_size"],
        f"= TP {layout['tp']} x PP {layout['pp']} x CP {layout['cp']} x DP {layout['dp']}"
        + (f"; {', '.join(extras)}" if extras else ""),
    )
    row("precision", layout["precision"])
    row("recompute", layout["recompute"])
    for m in memory["stages"]:
        parts = [
            x
            for x in (
                m["embedding"] and "embedding",
                m["latent"] and f"latent before block {layout['injection_layer']}",
                m["output_layer"] and "output layer",
            )
            if x
        ]
        first, last = m["layers"]
        row(f"stage {m['stage'] + 1}", f"blocks {first + 1}-{last}", ", ".join(parts))

    lines.append("parameters")
    row("total", _count(params["total"]), f"{params['total']:,}")
    row(
        "embeddings",
        _count(params["embedding"] + params["output_layer"]),
        "input + output layer" if params["output_layer"] else "tied with the output layer",
    )
    row("decoder", _count(params["decoder"]))
    row("encoder", _count(params["encoder"]), "block, zeta, readout")
    row("post-sampler", _count(params["post_sampler"]), "C x D, rows sharded over TP")
    row("vocabulary", f"{vocab['padded']:,}", f"{vocab['size']:,} from {vocab['source']}, padded")

    lines.append("training FLOPs per token")
    row("decoder", f"{flops['decoder']:.3g}")
    row("encoder", f"{flops['encoder']:.3g}")
    row("mapper backward", f"{flops['mapper_backward']:.3g}")
    row("total", f"{flops['total']:.3g}")

    lines.append("tokens")
    row(
        "per iteration",
        f"{batch['tokens_per_iteration']:,}",
        f"= {batch['global_batch_size']} x {batch['seq_length']} (micro batch "
        f"{batch['micro_batch_size']} x DP {layout['dp']} x {batch['num_microbatches']} microbatches)",
    )
    row(
        "iterations",
        f"{tokens['train_iters']:,}",
        f"from --train-samples {tokens['train_samples']:,}" if tokens["train_samples"] else "",
    )
    row("total", _count(tokens["total"]))

    stages = memory["stages"]
    lines.append("memory per GPU, GiB (estimate)" + "".join(f"{'stage ' + str(m['stage'] + 1):>10}" for m in stages))
    for key, label in (
        ("weights", "weights"),
        ("gradients", "gradients (fp32)"),
        ("optimizer", "optimizer (fp32 + Adam)"),
        ("fp8_weights", "fp8 weight copies"),
        ("activations", "activations"),
        ("mapper_backward", "mapper backward"),
        ("overhead", "CUDA/NCCL/fragmentation"),
        ("total", "total"),
    ):
        lines.append(f"  {label:<28}" + "".join(f"{m[key] / GIB:>10.1f}" for m in stages))
    peak = memory["peak"]
    lines.append("  microbatches in flight      " + "".join(f"{m['in_flight']:>10}" for m in stages))
    lines.append(f"  peak {peak['total'] / GIB:.1f} GiB of {memory['limit_gib']:g} (--gpu-memory-gb)")

    lines.append("time")
    row("at MFU", f"{timing['mfu']:.0%}", f"of {timing['peak_tflops']:g} TFLOP/s per GPU (--peak-tflops)")
    row(
        "per iteration",
        f"{timing['seconds_per_iteration']:.2f} s",
        f"{timing['tokens_per_second_per_gpu']:,.0f} tokens/s/GPU",
    )
    row("total", _duration(timing["seconds"]), f"{_count(tokens['total'])} tokens")
    # One line for scripts (launch_scripts/common.sh reads train_iters from it).
    lines.append(
        f"plan: ok train_iters={tokens['train_iters']} world_size={layout['world_size']} "
        f"peak_memory_gib={peak['total'] / GIB:.1f}"
    )
    return "\n".join(lines)


def print_plan(args) -> None:
    """Prints the plan; raises ArgumentError after printing if the memory estimate does not fit."""
    result = build_plan(args)
    fits = result["memory"]["peak"]["total"] <= result["memory"]["limit_gib"] * GIB
    text = format_plan(result)
    if not fits:
        text = text.rsplit("\n", 1)[0]  # no "plan: ok" line
    print(text, flush=True)
    check_plan(result)
