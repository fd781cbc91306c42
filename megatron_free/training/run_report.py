"""What a run prints once, as Megatron-LM users expect it: at the start the arguments, the parallel
layout, the parameter counts and the datasets; at the end a summary. The texts are built here and
printed by pretrain.run (and setup) on the logging rank.

    print_rank_last(format_arguments(args))   # Megatron-LM's dotted, sorted table
    print_rank_last(format_layout(args, stages))  # TP/PP/CP/DP, world size, batch, pipeline stages
    print_model_and_data(args, model_chunks, train_ds, valid_ds)   # collective
    print_rank_last(format_summary(...))      # iterations, time, tokens/s, validation, checkpoint
"""

from __future__ import annotations

import datetime
from typing import Optional


def format_arguments(args) -> str:
    """Every argument, as Megatron-LM's _print_args prints them: one per line, the name padded with
    dots to 48 characters, sorted case-insensitively."""
    lines = [f"  {name} {'.' * (48 - len(name))} {value}" for name, value in vars(args).items()]
    return "\n".join(
        [
            "------------------------ arguments ------------------------",
            *sorted(lines, key=str.lower),
            "-------------------- end of arguments ---------------------",
        ]
    )


def format_layout(args, stages: list[tuple[int, int]]) -> str:
    """The parallel layout and the batch: sizes, world size, microbatches, and the pipeline stages
    ([first, last) decoder layers of each, planner.pipeline_stages)."""
    tp, pp, cp, dp = (
        args.tensor_model_parallel_size,
        args.pipeline_model_parallel_size,
        args.context_parallel_size,
        args.data_parallel_size,
    )
    options = [
        name
        for name, on in (
            ("sequence parallel", args.sequence_parallel),
            ("distributed optimizer", args.use_distributed_optimizer),
        )
        if on
    ]
    lines = [
        f"parallel layout: world size {tp * pp * cp * dp} = TP {tp} x PP {pp} x CP {cp} x DP {dp}"
        + (f"; {', '.join(options)}" if options else ""),
        f"batch: global batch {args.global_batch_size} = micro batch {args.micro_batch_size} x DP {dp} "
        f"x {args.num_microbatches} microbatches; {args.global_batch_size * args.seq_length:,} tokens "
        f"per iteration ({args.seq_length} per sample); {args.train_iters:,} iterations",
    ]
    for stage, (first, last) in enumerate(stages):
        lines.append(f"pipeline stage {stage + 1}: {_stage_contents(args, stage, first, last)}")
    return "\n".join(lines)


def _stage_contents(args, stage: int, first: int, last: int) -> str:
    """'decoder blocks 1-2, embedding' for the 0-based layers [first, last) of a stage."""
    parts = [f"decoder blocks {first + 1}-{last}"]
    if stage == 0:
        parts.append("embedding")
    if not args.baseline and first <= args.injection_layer - 1 < last:
        parts.append(f"latent (encoder, readout, post-sampler) before block {args.injection_layer}")
    if stage == args.pipeline_model_parallel_size - 1:
        parts.append("output layer")
    return ", ".join(parts)


def parameter_report(args, model_chunks) -> str:
    """Parameters: the model's total and the latent's share (megatron_free.training.flops, the
    planner's count), and each pipeline stage's as built (summed over its tensor-parallel ranks).
    Collective over the pipeline and tensor-parallel groups: every rank must call it."""
    from megatron_free.model.model import unwrap
    from megatron_free.training.flops import latent_parameter_parts, model_shape, parameter_counts

    shape = model_shape(unwrap(model_chunks[0]).description, args.seq_length)
    counts = parameter_counts(shape)
    total = counts["total"]
    tied = "tied embeddings counted once" if shape.tied_embeddings else "untied input and output embeddings"
    lines = [f"parameters: {total:,} in all ({tied})"]
    if not args.baseline:
        parts = latent_parameter_parts(shape)
        latent = sum(parts.values())
        lines.append(
            f"  latent: {latent:,} ({100 * latent / total:.2f}% of all) = encoder (block + zeta) "
            f"{parts['encoder']:,} ({100 * parts['encoder'] / total:.2f}%) + readout "
            f"{parts['readout']:,} ({100 * parts['readout'] / total:.2f}%) + post-sampler "
            f"{parts['post_sampler']:,} ({100 * parts['post_sampler'] / total:.2f}%)"
        )
    stages = _stage_parameter_counts(model_chunks)
    tp = args.tensor_model_parallel_size
    for stage, (in_stage, per_gpu) in enumerate(stages):
        note = f" ({per_gpu:,} on each of its {tp} tensor-parallel GPUs)" if tp > 1 else ""
        lines.append(f"  pipeline stage {stage + 1}: {in_stage:,}{note}")
    if len(stages) > 1 and shape.tied_embeddings:
        lines.append(
            "  (the last stage holds a copy of the tied embeddings for the output layer, "
            "so the stages add up to more than the total)"
        )
    return "\n".join(lines)


def _stage_parameter_counts(model_chunks) -> list[tuple[int, int]]:
    """[(parameters of the stage, parameters on one of its GPUs)] for every pipeline stage,
    counted from the built model: a tensor-parallel shard counts on every TP rank, a
    replicated parameter once."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    params = [p for chunk in model_chunks for p in chunk.parameters()]
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"  # NCCL or gloo
    distinct = torch.tensor(
        [sum(p.numel() for p in params if param_is_not_tensor_parallel_duplicate(p))], dtype=torch.int64, device=device
    )
    dist.all_reduce(distinct, group=parallel_state.get_tensor_model_parallel_group())
    mine = torch.tensor([distinct.item(), sum(p.numel() for p in params)], dtype=torch.int64, device=device)
    group = parallel_state.get_pipeline_model_parallel_group()
    stages = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(stages, mine, group=group)
    return [(int(s[0]), int(s[1])) for s in stages]


def dataset_report(args, train_ds, valid_ds) -> str:
    """The data: where it comes from and the sizes of the train and validation datasets."""
    validating = valid_ds is not None and bool(args.eval_interval)
    sizes = (
        f"train {len(train_ds):,} samples, "
        + (f"valid {len(valid_ds):,} samples" if validating else "no validation")
        + f", {args.seq_length} tokens each"
    )
    if args.toy_data:
        return f"datasets: toy data (--toy-data): the paper's toy task, generated on the fly (no files); {sizes}"
    if args.mock_data:
        return (
            f"datasets: mock data (--mock-data): megatron-core's MockGPTDataset, synthetic "
            f"documents (no files); {sizes}"
        )
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = get_blend_from_list(args.data_path)
    lines = [f"datasets: --data-path, {len(prefixes)} indexed dataset(s), --split {args.split}; {sizes}"]
    for i, prefix in enumerate(prefixes):
        indexed = IndexedDataset(prefix)
        documents = len(indexed.document_indices) - 1
        tokens = int(indexed.sequence_lengths.sum(dtype="int64"))
        weight = f"weight {weights[i]:g}, " if weights else ""
        lines.append(f"  {prefix}: {weight}{documents:,} documents, {tokens:,} tokens")
    return "\n".join(lines)


def format_summary(
    *,
    start_iteration: int,
    iteration: int,
    train_iters: int,
    seconds: float,
    tokens_per_iteration: int,
    skipped: int,
    validation: Optional[tuple[int, dict]],
    saved: Optional[str],
) -> str:
    """The end of a run: iterations done, wall time, tokens/s, skipped iterations, the last
    validation losses and the checkpoint written last."""
    done = iteration - start_iteration
    tokens = done * tokens_per_iteration
    start = f" (resumed at {start_iteration})" if start_iteration else ""
    lines = [
        "------------------------ end of training ------------------------",
        f"  iterations: {done:,} in this run{start}, now at {iteration:,} of {train_iters:,}",
        f"  wall time: {datetime.timedelta(seconds=round(seconds))} in the training loop "
        f"({1000 * seconds / max(done, 1):.1f} ms per iteration)",
        f"  tokens: {tokens:,} ({tokens / seconds if seconds > 0 else float('nan'):,.0f} tokens/s "
        f"over that time, validation and checkpoints included)",
        f"  skipped iterations (non-finite loss or grad norm): {skipped}",
    ]
    if validation is not None:
        at, losses = validation
        text = " | ".join(f"{name}: {value:.6E}" for name, value in losses.items())
        lines.append(f"  last validation (iteration {at}): {text}")
    else:
        lines.append("  last validation: none (no --eval-interval, or none reached)")
    lines.append(f"  checkpoint: {saved}" if saved else "  checkpoint: none saved (no --save)")
    lines.append("-------------------------------------------------------------------")
    return "\n".join(lines)


def print_model_and_data(args, model_chunks, train_ds, valid_ds) -> None:
    """The parameter counts and the datasets, on the logging rank. Collective: every rank calls it."""
    from megatron_free.training.metrics import is_logging_rank

    parameters = parameter_report(args, model_chunks)
    if is_logging_rank():
        print(parameters, flush=True)
        print(dataset_report(args, train_ds, valid_ds), flush=True)
