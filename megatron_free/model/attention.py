"""Core attention on torch's scaled_dot_product_attention for megatron-core's local layer spec.

megatron-core's own DotProductAttention materialises [b*np, sq, sk] scores in a CUDA memory
buffer; this module keeps megatron's interface and [s, b, h, d] layout but lets torch pick a
fused kernel (flash / memory-efficient on GPU, the math kernel on CPU).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import get_cuda_rng_tracker
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPACoreAttention(MegatronModule):
    """Drop-in for megatron's DotProductAttention: causal or non-causal, GQA, [s, b, h, d]."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        **kwargs,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(
                "--context-parallel-size > 1 needs the Transformer Engine spec (--transformer-impl transformer_engine)"
            )
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("packed sequences and attention bias need the TE spec")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        seq_q, batch, heads, head_dim = query.shape
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        is_causal = mask_type == AttnMaskType.causal
        mask = None
        if not is_causal and attention_mask is not None and mask_type != AttnMaskType.no_mask:
            # megatron masks are True where attention is NOT allowed; SDPA's are the opposite.
            mask = ~attention_mask
        dropout_p = self.dropout_p if self.training else 0.0
        # Attention heads are split over TP ranks: dropout draws from the per-TP-rank stream.
        rng = get_cuda_rng_tracker().fork() if dropout_p > 0 else contextlib.nullcontext()
        with rng:
            context = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=self.softmax_scale,
                enable_gqa=k.shape[1] != heads,
            )
        # [b, h, s, d] -> [s, b, h*d]
        return context.permute(2, 0, 1, 3).reshape(seq_q, batch, heads * head_dim)
