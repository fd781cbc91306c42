"""A tiny Llama-style Free Transformer (or baseline) and deterministic batches for tests, the
pretrain arguments of that model on the toy task, plus the helpers that run one step under any
layout and bring gradients back to full, unsharded tensors."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_free.config import FreeTransformerConfig, llama_style_kwargs
from megatron_free.model.init import global_parameter_name, initialize_parameters
from megatron_free.model.model import FreeTransformerModel
from megatron_free.parallel.distributed import ParallelConfig, initialize_distributed
from megatron_free.training.step import make_forward_step

VOCAB, SEQ, MICRO_BATCH = 64, 16, 2


def tiny_config(tp=1, pp=1, sp=False, **overrides) -> FreeTransformerConfig:
    kwargs = dict(
        num_layers=4,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        latent_bits=6,
        free_bits=0.0,
        mapper_chunk_size=16,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=sp,
        pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
        **llama_style_kwargs(),
    )
    kwargs.update(overrides)
    return FreeTransformerConfig(**kwargs)


# pretrain flags of the tiny model on the toy task: 4 iterations, one log line each.
TINY_PRETRAIN_ARGV = [
    "--toy-data",
    "--seq-length",
    "66",
    "--num-layers",
    "4",
    "--hidden-size",
    "32",
    "--ffn-hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--group-query-attention",
    "--num-query-groups",
    "2",
    "--latent-bits",
    "6",
    "--free-bits",
    "0.25",
    "--mapper-chunk-size",
    "16",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--train-iters",
    "4",
    "--lr",
    "0.01",
    "--lr-decay-style",
    "constant",
    "--log-interval",
    "1",
    "--make-vocab-size-divisible-by",
    "16",
    "--seed",
    "3",
]


def tiny_args(world_size: int, *extra: str):
    """Parsed TINY_PRETRAIN_ARGV; ``extra`` flags override (the last value of a flag wins)."""
    from megatron_free.arguments import parse_args

    return parse_args([*TINY_PRETRAIN_ARGV, *extra], world_size=world_size)


def tiny_batches(num: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(num):
        tokens = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ + 1), generator=gen)
        batches.append(
            {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": torch.ones(MICRO_BATCH, SEQ),
                "position_ids": torch.arange(SEQ).expand(MICRO_BATCH, SEQ),
                "latent_seeds": torch.arange(MICRO_BATCH) + 100 * i,
            }
        )
    return batches


def build_tiny_model(config: FreeTransformerConfig, seed: int = 7) -> FreeTransformerModel:
    initialize_distributed(
        ParallelConfig(
            config.tensor_model_parallel_size,
            config.pipeline_model_parallel_size,
            sequence_parallel=config.sequence_parallel,
        ),
        seed=seed,
    )
    model = FreeTransformerModel(config, vocab_size=VOCAB, max_sequence_length=SEQ)
    initialize_parameters(model, seed)
    return model


def run_step(model, batches, forward_only=False):
    """One forward-backward over ``batches`` (one per microbatch); returns the mean lm loss on
    every rank (broadcast from the last stage)."""
    forward_backward = get_forward_backward_func()
    reports = forward_backward(
        forward_step_func=make_forward_step(kl_loss_scale=1.0 / len(batches)),
        data_iterator=iter(batches),
        model=model,
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=MICRO_BATCH,
        forward_only=forward_only,
    )
    if not forward_only and model.config.sequence_parallel:
        _allreduce_sequence_parallel_grads(model)
    total = torch.zeros(2)
    if parallel_state.is_pipeline_last_stage():
        for report in reports:
            total += report["lm loss"]
    torch.distributed.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    return (total[0] / total[1]).item()


def _allreduce_sequence_parallel_grads(model):
    """What megatron's finalize_model_grads does for a DDP-wrapped model under SP: sum the
    partial gradients of replicated parameters that saw sequence-sharded inputs."""
    group = parallel_state.get_tensor_model_parallel_group()
    for param in model.parameters():
        if getattr(param, "sequence_parallel", False) and param.grad is not None:
            torch.distributed.all_reduce(param.grad, group=group)


def _unshard(tensor, param, name, gated_linear_unit):
    if not getattr(param, "tensor_model_parallel", False):
        return tensor
    group = parallel_state.get_tensor_model_parallel_group()
    tp = torch.distributed.get_world_size(group)
    if tp == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(tp)]
    torch.distributed.all_gather(shards, tensor.contiguous(), group=group)
    dim = param.partition_dim
    if gated_linear_unit and name.endswith("mlp.linear_fc1.weight"):
        gates, ups = zip(*(s.chunk(2, dim) for s in shards))
        return torch.cat(gates + ups, dim)
    return torch.cat(shards, dim)


def full_tensors(model, use_grad: bool) -> dict:
    """{global parameter name: full tensor} for this rank's stage (weights or gradients)."""
    out = {}
    for name, param in model.named_parameters():
        tensor = (
            param.main_grad if use_grad and hasattr(param, "main_grad") else (param.grad if use_grad else param.data)
        )
        if tensor is None:
            tensor = torch.zeros_like(param)
        full = _unshard(tensor.detach().clone(), param, name, model.config.gated_linear_unit)
        out[global_parameter_name(model, name)] = full
    return out


def merge_ranks(per_rank: list[dict]) -> dict:
    merged = {}
    for d in per_rank:
        merged.update(d)
    return merged
