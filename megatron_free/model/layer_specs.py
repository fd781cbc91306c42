"""megatron-core layer specs for the decoder and the encoder: Transformer Engine (fused, FP8) on
GPU, megatron-core's plain-PyTorch modules with our SDPA core attention otherwise."""

from __future__ import annotations

import copy

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_free.model.attention import SDPACoreAttention

TRANSFORMER_IMPLS = ("local", "transformer_engine")


class LocalRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm built from a megatron config, usable with sequence parallelism.

    megatron's WrappedTorchNorm refuses sequence parallelism only because nothing marks its
    weight: under SP each rank normalises its own sequence shard, so the weight's gradient is
    partial, and megatron all-reduces it over TP when it carries ``sequence_parallel``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        super().__init__(hidden_size, eps=eps, device=device, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel


def decoder_layer_spec(transformer_impl: str) -> ModuleSpec:
    """A Llama-style (RMSNorm, SwiGLU via the config, RoPE, GQA) causal decoder layer."""
    if transformer_impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec()
    if transformer_impl != "local":
        raise ValueError(f"--transformer-impl must be one of {TRANSFORMER_IMPLS}, got {transformer_impl!r}")
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    spec.submodules.input_layernorm = LocalRMSNorm
    spec.submodules.pre_mlp_layernorm = LocalRMSNorm
    return spec


def non_causal(spec: ModuleSpec) -> ModuleSpec:
    """The same layer with a bidirectional (unmasked) self-attention: the encoder's block."""
    spec = copy.deepcopy(spec)
    spec.submodules.self_attention.params = {
        **spec.submodules.self_attention.params,
        "attn_mask_type": AttnMaskType.no_mask,
    }
    return spec


def final_norm_spec(transformer_impl: str):
    """The decoder's final RMSNorm (the config's normalization)."""
    if transformer_impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return LocalRMSNorm
