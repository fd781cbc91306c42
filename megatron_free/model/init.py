"""Layout-independent parameter initialization.

megatron-core draws initial weights from per-rank RNG streams, so the same --seed gives different
models under TP2 and TP1, or PP2 and PP1, and loss curves of two layouts are not comparable. Here
every parameter is drawn, full size, from a generator seeded by (seed, the parameter's global
name), and each rank keeps its own shard: the same seed gives the same model under any layout.
The distributions are megatron's: N(0, init_method_std) for weights, N(0, std / sqrt(2 L)) for the
output projections of attention and MLP, ones for norms.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
from megatron.core import parallel_state

_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")


def global_parameter_name(model, local_name: str) -> str:
    """The parameter's name as in an unsplit (PP=1) model: the local layer index becomes the
    global one, and a tied output layer is the word embedding."""
    match = _LAYER_INDEX.match(local_name)
    if match:
        layer = model.decoder.layers[int(match.group(1))]
        local_name = f"decoder.layers.{layer.layer_number - 1}." + local_name[match.end() :]
    if local_name == "output_layer.weight" and model.share_embeddings_and_output_weights:
        return "embedding.word_embeddings.weight"
    return local_name


def _is_norm(name: str) -> bool:
    return "norm" in name.rsplit(".", 2)[-2] or name.endswith("layer_norm_weight")


def _shard(full: torch.Tensor, param: torch.nn.Parameter, name: str, gated_linear_unit: bool):
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dim = param.partition_dim
    if gated_linear_unit and name.endswith("mlp.linear_fc1.weight"):
        # SwiGLU's fc1 holds [gate; up]; each rank keeps its slice of both halves.
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp_size, dim)[tp_rank], up.chunk(tp_size, dim)[tp_rank]], dim)
    return full.chunk(tp_size, dim)[tp_rank]


def initialize_parameters(model, seed: int) -> None:
    """Re-draws every parameter of ``model`` (one pipeline stage, one TP shard) from ``seed``."""
    config = model.config
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    output_std = config.init_method_std / math.sqrt(2.0 * config.num_layers)
    for local_name, param in model.named_parameters():
        name = global_parameter_name(model, local_name)
        if _is_norm(local_name):
            with torch.no_grad():
                param.fill_(1.0)
            continue
        std = output_std if name.endswith(("linear_proj.weight", "linear_fc2.weight")) else config.init_method_std
        full_shape = list(param.shape)
        if getattr(param, "tensor_model_parallel", False):
            full_shape[param.partition_dim] *= tp_size
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
        full = torch.empty(full_shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
        with torch.no_grad():
            param.copy_(_shard(full, param, local_name, config.gated_linear_unit))
