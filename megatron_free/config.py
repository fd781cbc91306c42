"""Model configuration: megatron-core's TransformerConfig plus the Free Transformer's latent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_free.parallel.distributed import ParallelConfig

LOG2 = math.log(2.0)


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field (or flag) and the value."""


@dataclass
class FreeTransformerConfig(TransformerConfig):
    """TransformerConfig for the Free Transformer (or, with ``baseline=True``, the plain decoder
    built through the same code minus the encoder and the latent injection).

    Llama-style defaults (RMSNorm, SwiGLU, RoPE applied by the model, no biases) are set by
    ``llama_style_kwargs``; this class only adds and validates the latent's fields.
    """

    baseline: bool = False
    """The plain decoder: no encoder, no latent, no KL."""

    latent_bits: int = 16
    """H: bits per token of the latent Z; the post-sampler has C = 2^H rows."""

    free_bits: float = 0.5
    """kappa in bits per token (the loss uses kappa * log 2 nats)."""

    injection_layer: Optional[int] = None
    """1-based index of the decoder block that receives Z (block L/2+1 by default)."""

    mapper_chunk_size: int = 4096
    """Codes per chunk in the binary mapper's backward (peak extra memory T x chunk)."""

    def __post_init__(self):
        super().__post_init__()
        if self.injection_layer is None:
            self.injection_layer = self.num_layers // 2 + 1
        if self.baseline:
            return
        if not 1 <= self.latent_bits <= 24:
            raise ConfigError(f"latent_bits (--latent-bits) must be in [1, 24], got {self.latent_bits}")
        if self.free_bits < 0:
            raise ConfigError(f"free_bits (--free-bits) must be >= 0, got {self.free_bits}")
        if not 2 <= self.injection_layer <= self.num_layers:
            raise ConfigError(
                f"injection_layer (--injection-layer) must be in [2, {self.num_layers}] "
                f"for --num-layers {self.num_layers}, got {self.injection_layer}"
            )
        if self.num_codes % self.tensor_model_parallel_size:
            raise ConfigError(
                f"2^--latent-bits = {self.num_codes} post-sampler rows do not divide over "
                f"--tensor-model-parallel-size {self.tensor_model_parallel_size}"
            )
        if self.mapper_chunk_size < 1:
            raise ConfigError(f"mapper_chunk_size must be >= 1, got {self.mapper_chunk_size}")

    @property
    def num_codes(self) -> int:
        return 2**self.latent_bits

    @property
    def free_bits_nats(self) -> float:
        return self.free_bits * LOG2


def llama_style_kwargs() -> dict:
    """TransformerConfig settings for the paper's Llama-3-style backbone."""
    return dict(
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
    )


@dataclass(frozen=True)
class PrecisionConfig:
    """Compute precision: bf16 / fp16 mixed precision, FP8 GEMMs through Transformer Engine."""

    bf16: bool = False
    fp16: bool = False
    fp8_format: Optional[str] = None
    fp8_recipe: str = "delayed"
    fp8_margin: int = 0
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"

    @property
    def params_dtype(self):
        import torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32


@dataclass(frozen=True)
class StageLayout:
    """The parallel layout as the model sees it: the parallel sizes, and uneven first/last stages."""

    parallel: ParallelConfig = ParallelConfig()
    first_stage_layers: Optional[int] = None
    last_stage_layers: Optional[int] = None


@dataclass(frozen=True)
class RecomputeConfig:
    """Activation recomputation (megatron-core's granularity, method and layers)."""

    granularity: Optional[str] = None
    method: Optional[str] = None
    num_layers: Optional[int] = None


def build_model_config(
    description,
    layout: StageLayout = StageLayout(),
    precision: PrecisionConfig = PrecisionConfig(),
    recompute: RecomputeConfig = RecomputeConfig(),
    *,
    init_method_std: float = 0.02,
    mapper_chunk_size: int = 4096,
) -> FreeTransformerConfig:
    """The FreeTransformerConfig of a model (a model/description.ModelDescription) under a layout and a precision."""
    import torch

    dtype = precision.params_dtype
    kwargs = llama_style_kwargs()
    kwargs.update(
        num_layers=description.num_layers,
        hidden_size=description.hidden_size,
        ffn_hidden_size=description.ffn_hidden_size,
        num_attention_heads=description.num_attention_heads,
        num_query_groups=description.num_query_groups,
        kv_channels=description.kv_channels,
        layernorm_epsilon=description.norm_epsilon,
        init_method_std=init_method_std,
        tensor_model_parallel_size=layout.parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=layout.parallel.pipeline_model_parallel_size,
        context_parallel_size=layout.parallel.context_parallel_size,
        sequence_parallel=layout.parallel.sequence_parallel,
        num_layers_in_first_pipeline_stage=layout.first_stage_layers,
        num_layers_in_last_pipeline_stage=layout.last_stage_layers,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu_initialization=not torch.cuda.is_available(),
        recompute_granularity=recompute.granularity,
        recompute_method=recompute.method,
        recompute_num_layers=recompute.num_layers,
        baseline=description.baseline,
        latent_bits=description.latent_bits,
        free_bits=description.free_bits,
        injection_layer=description.injection_layer,
        mapper_chunk_size=mapper_chunk_size,
    )
    if precision.fp8_format:
        kwargs.update(
            fp8=precision.fp8_format,
            fp8_recipe=precision.fp8_recipe,
            fp8_margin=precision.fp8_margin,
            fp8_amax_history_len=precision.fp8_amax_history_len,
            fp8_amax_compute_algo=precision.fp8_amax_compute_algo,
        )
    return FreeTransformerConfig(**kwargs)
