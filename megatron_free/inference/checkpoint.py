"""Load a megatron_free checkpoint, saved under any TP/PP/DP layout, into one unsplit (TP1/PP1) model in
this process: what the HuggingFace export and single-process generation start from. The checkpoint's model
description (model/description.py) says what to build; dist_checkpointing reshards on load, so no
layout-specific code is needed."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint.api import CheckpointException

from megatron_free.config import build_model_config
from megatron_free.data.tokenizers import Tokenizer, build_tokenizer
from megatron_free.model.description import ModelDescription
from megatron_free.model.model import FreeTransformerModel
from megatron_free.parallel.distributed import ParallelConfig, initialize_distributed
from megatron_free.training.checkpointing import CheckpointError, resolve_load_dir, saved_description


class LoadedCheckpoint(NamedTuple):
    model: FreeTransformerModel
    """float32 on this process's device, in eval mode (float32 holds bf16/fp16 weights exactly)."""
    description: ModelDescription
    tokenizer: Optional[Tokenizer]
    weights_dtype: torch.dtype
    """The dtype the run kept its weights in (megatron's params_dtype)."""
    iteration: int


def _weights_dtype(common: dict) -> torch.dtype:
    if "weights_dtype" in common:
        return getattr(torch, common["weights_dtype"])
    flags = common.get("args", {})  # a checkpoint from before the description: the run's flags
    return torch.bfloat16 if flags.get("bf16") else torch.float16 if flags.get("fp16") else torch.float32


def load_for_inference(load: str) -> LoadedCheckpoint:
    """The checkpoint under ``load`` (a run's --save root or one iter_XXXXXXX). Initializes a one-rank
    process group if needed."""
    path = resolve_load_dir(load)
    try:
        common = dist_checkpointing.load_common_state_dict(str(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - dist_checkpointing raises many types
        raise CheckpointError(f"--load {path}: not a readable checkpoint ({type(e).__name__})") from None
    description = saved_description(path, common)
    try:
        tokenizer = (
            build_tokenizer(description.tokenizer_type, description.tokenizer_model)
            if description.tokenizer_type
            else None
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--load {path}: its tokenizer does not load ({e})") from None
    initialize_distributed(ParallelConfig(), seed=0)
    model = FreeTransformerModel.from_description(description, build_model_config(description))
    try:
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - the latter is a BaseException
        raise CheckpointError(f"--load {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    model.load_state_dict(loaded["model"])
    model.eval()
    return LoadedCheckpoint(model, description, tokenizer, _weights_dtype(common), int(common["iteration"]))
