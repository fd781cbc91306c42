"""Load a megatron_free checkpoint, saved under any TP/PP/DP layout, into one unsplit (TP1/PP1)
model in this process: what the HuggingFace export and single-process generation start from.
dist_checkpointing reshards on load, so no layout-specific code is needed."""

from __future__ import annotations

import argparse

from megatron_free.training.checkpointing import CheckpointError, resolve_load_dir

# The saved run's layout and data flags do not apply to a one-process load.
_SINGLE_PROCESS = dict(
    tensor_model_parallel_size=1, pipeline_model_parallel_size=1, context_parallel_size=1,
    sequence_parallel=False, use_distributed_optimizer=False, overlap_grad_reduce=False,
    overlap_param_gather=False, decoder_first_pipeline_num_layers=None,
    decoder_last_pipeline_num_layers=None, data_parallel_size=1, transformer_impl="local",
    recompute_granularity=None, fp8_format=None, bf16=False, fp16=False, init_from_baseline=None,
)


def saved_args(path) -> argparse.Namespace:
    """The run arguments stored in a checkpoint (its common state)."""
    from megatron.core import dist_checkpointing

    try:
        common = dist_checkpointing.load_common_state_dict(str(path))
    except Exception as e:  # noqa: BLE001 - dist_checkpointing raises many types for bad files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if "args" not in common:
        raise CheckpointError(f"{path}: holds no run arguments (not a megatron_free checkpoint)")
    return argparse.Namespace(**common["args"])


def saved_params_dtype(run_args: argparse.Namespace):
    """The dtype a run kept its weights in, so the dtype of its checkpoint's weights (megatron's
    params_dtype): bfloat16 with --bf16, float16 with --fp16, float32 otherwise."""
    import torch

    return torch.bfloat16 if run_args.bf16 else torch.float16 if run_args.fp16 else torch.float32


def load_unsplit_model(load: str):
    """(model in float32 on CPU/GPU, run args, tokenizer or None) from a checkpoint directory
    (a run's --save root or one iter_XXXXXXX). Initializes a one-rank process group if needed.
    The run args are the saved ones with a one-process layout, plus ``checkpoint_dtype``: the
    dtype of the checkpoint's weights (the float32 model holds them exactly)."""
    from megatron.core import dist_checkpointing

    from megatron_free.model.model import FreeTransformerModel
    from megatron_free.parallel.distributed import ParallelConfig, initialize_distributed
    from megatron_free.pretrain import build_model_config, build_tokenizer_for

    path = resolve_load_dir(load)
    args = saved_args(path)
    args.checkpoint_dtype = saved_params_dtype(args)
    vars(args).update(_SINGLE_PROCESS)
    tokenizer = build_tokenizer_for(args)
    initialize_distributed(ParallelConfig(), seed=args.seed)
    model = FreeTransformerModel(
        build_model_config(args), vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings, transformer_impl="local",
        rotary_base=args.rotary_base,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
    )
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - the latter is a BaseException
        raise CheckpointError(f"{path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    model.load_state_dict(loaded["model"])
    model.eval()
    return model, args, tokenizer
