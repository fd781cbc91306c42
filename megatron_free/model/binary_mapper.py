"""Binary Mapper and post-sampler of the Free Transformer latent (Fleuret 2025, Eq. 6-8), single-device math.

The encoder emits H bit logits o_{t,h} per token. The latent Z_t is one of C = 2^H codes:

    p_{t,h} = sigmoid(o_{t,h}),   B_{t,h} ~ Bernoulli(p_{t,h}),   d_t = sum_h 2^h B_{t,h}

Bit order (project decision): bit h, the h-th column of the logits, has weight 2^h in the code index, so
u_h(d) = (d >> h) & 1. Code 4 = 0b100 is "bit 2 on, all others off".

The post-sampler is a bias-free linear map C -> D with weight W [C, D] (project decision: no bias, as the
rest of the backbone). With Y_t the one-hot of d_t and G_{t,d} = prod_h p^{u_h(d)} (1-p)^{1-u_h(d)} the
probability of code d, its output is

    R = (Y + G - stopgrad(G)) @ W

so the forward value is the row gather W[d_t] and only the backward sees G:

    dL/dW_d      = sum_{t: d_t = d} dR_t                                  (an embedding backward)
    dL/do_{t,h}  = sum_d g_{t,d} G_{t,d} (u_h(d) - p_{t,h}),   g_{t,d} = <dR_t, W_d>

The second sum runs over all C codes (a T x C x D product, like a 65k-vocabulary output layer).
`BinaryMapperPostSampler` computes it in chunks of codes so that no T x C tensor is ever alive, using
log G_{t,d} = sum_h logsigmoid(-o_{t,h}) + sum_h o_{t,h} u_h(d), one [T,H] @ [H,chunk] matmul per chunk.

Tensor parallelism: the weight may be one row shard (rows code_offset .. code_offset + C_local - 1), exactly as
megatron's VocabParallelEmbedding. Each rank returns a partial R (zeros for codes outside its shard) and a
partial logit gradient (the sum over its codes only). The caller, not this module, wraps the logits in
copy_to_tensor_model_parallel_region (all-reduces the [T,H] logit gradient) and the output in
reduce_from_tensor_model_parallel_region (all-reduces the partial R). Nothing here touches a process group.

Codes are drawn elsewhere (model/latent_rng.py: a stateless hash of seed, position and bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "code_bits",
    "BinaryMapperPostSampler",
    "binary_mapper_post_sampler",
    "dense_binary_mapper_reference",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The logits' dtype promoted to at least float32 (bf16 -> fp32, fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def code_bits(codes: Tensor, num_bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """u_h(d) for every code: [...] integer codes -> [..., num_bits] of 0/1, column h = bit of weight 2^h."""
    shifts = torch.arange(num_bits, device=codes.device, dtype=torch.long)
    return ((codes.long().unsqueeze(-1) >> shifts) & 1).to(dtype)


def _local_rows(codes: Tensor, code_offset: int, num_local: int) -> tuple[Tensor, Tensor]:
    """Shard-local row index of each code (0 where outside the shard) and the outside-shard mask."""
    local = codes - code_offset
    outside = (local < 0) | (local >= num_local)
    return local.masked_fill(outside, 0), outside


class BinaryMapperPostSampler(torch.autograd.Function):
    """R = (Y + G - stopgrad(G)) @ W for the rows of W this shard holds; 2-D inputs ([T,H], [T], [C_local,D]).

    Use `binary_mapper_post_sampler` rather than calling `apply` directly: it flattens leading dims and
    checks shapes. bit_logits may be None (prior or user-given codes): then this is a plain row gather.
    """

    @staticmethod
    def forward(
        ctx, bit_logits: Tensor | None, codes: Tensor, weight: Tensor, code_offset: int, chunk_size: int
    ) -> Tensor:
        local, outside = _local_rows(codes, code_offset, weight.shape[0])
        # Forward value is exactly Y @ W: a row gather, zero for codes another shard holds.
        output = F.embedding(local, weight).masked_fill_(outside.unsqueeze(-1), 0.0)
        ctx.save_for_backward(bit_logits, local, outside, weight)
        ctx.code_offset = code_offset
        ctx.chunk_size = chunk_size
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        bit_logits, local, outside, weight = ctx.saved_tensors
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[2]:
            # Embedding backward: sampled rows only; tokens whose code lives on another shard contribute zero.
            masked = grad_output.masked_fill(outside.unsqueeze(-1), 0.0)
            grad_weight = torch.ops.aten.embedding_dense_backward(masked, local, weight.shape[0], -1, False)
        if bit_logits is not None and ctx.needs_input_grad[0]:
            grad_logits = _straight_through_logit_grad(
                bit_logits, grad_output, weight, ctx.code_offset, ctx.chunk_size
            ).to(bit_logits.dtype)
        return grad_logits, None, grad_weight, None, None


def _straight_through_logit_grad(
    bit_logits: Tensor, grad_output: Tensor, weight: Tensor, code_offset: int, chunk_size: int
) -> Tensor:
    """dL/do_{t,h} = sum_{d in shard} g_{t,d} G_{t,d} (u_h(d) - p_{t,h}), chunked over codes.

    Peak extra memory is two [T, chunk] tensors (log G -> G, and g -> g*G) plus a [chunk, D] weight copy
    when the weight is not in the compute dtype.
    """
    dtype = _compute_dtype(bit_logits.dtype)
    logits = bit_logits.to(dtype)
    grad_r = grad_output.to(dtype)
    num_tokens, num_bits = logits.shape
    # log of the probability of the all-zeros code; log G for code d adds o . u(d).
    log_g_zero = F.logsigmoid(-logits).sum(-1, keepdim=True)
    sum_s_u = torch.zeros_like(logits)  # sum_d s_{t,d} u_h(d)
    sum_s = torch.zeros(num_tokens, 1, dtype=dtype, device=logits.device)  # sum_d s_{t,d}
    for start in range(0, weight.shape[0], chunk_size):
        stop = min(start + chunk_size, weight.shape[0])
        codes = torch.arange(start + code_offset, stop + code_offset, device=logits.device)
        bits = code_bits(codes, num_bits, dtype)  # [chunk, H]
        probs_g = torch.addmm(log_g_zero, logits, bits.T).exp_()  # G_{t,d}, [T, chunk]
        s = (grad_r @ weight[start:stop].to(dtype).T).mul_(probs_g)  # s = g * G, [T, chunk]
        del probs_g
        sum_s_u.addmm_(s, bits)
        sum_s.add_(s.sum(-1, keepdim=True))
    return sum_s_u - torch.sigmoid(logits) * sum_s


def binary_mapper_post_sampler(
    bit_logits: Tensor | None,
    codes: Tensor,
    weight: Tensor,
    code_offset: int = 0,
    chunk_size: int = 4096,
) -> Tensor:
    """Post-sampler output R [..., D] for codes [...] with the straight-through gradient to bit_logits [..., H].

    weight is this shard's rows [C_local, D] of the C x D post-sampler matrix, starting at code `code_offset`.
    Returns the partial R (zeros for codes outside the shard); the caller all-reduces over the shards.
    Pass bit_logits=None (or logits without grad) for prior or user-given codes: a plain row gather.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [C_local, D], got shape {tuple(weight.shape)}")
    if code_offset < 0:
        raise ValueError(f"code_offset={code_offset} must be >= 0")
    lead_shape = codes.shape
    flat_codes = codes.reshape(-1).long()
    flat_logits = None
    if bit_logits is not None:
        if bit_logits.shape[:-1] != lead_shape:
            raise ValueError(
                f"bit_logits shape {tuple(bit_logits.shape)} does not match codes shape {tuple(lead_shape)} + (H,)"
            )
        num_codes = 2 ** bit_logits.shape[-1]
        if code_offset + weight.shape[0] > num_codes:
            raise ValueError(
                f"code_offset={code_offset} + {weight.shape[0]} weight rows exceeds "
                f"C = 2^{bit_logits.shape[-1]} = {num_codes} codes"
            )
        flat_logits = bit_logits.reshape(-1, bit_logits.shape[-1])
    output = BinaryMapperPostSampler.apply(flat_logits, flat_codes, weight, code_offset, chunk_size)
    return output.reshape(*lead_shape, weight.shape[-1])


def dense_binary_mapper_reference(bit_logits: Tensor, codes: Tensor, weight: Tensor) -> Tensor:
    """Explicit (Y + G - G.detach()) @ W over all C codes, with T x C tensors; for tests and benchmarks only.

    bit_logits [..., H], codes [...], full weight [C, D] -> R [..., D]; gradients by plain autograd.
    """
    num_bits = bit_logits.shape[-1]
    num_codes = 2**num_bits
    if weight.shape[0] != num_codes:
        raise ValueError(f"weight has {weight.shape[0]} rows; the dense reference needs all C = {num_codes}")
    lead_shape = codes.shape
    logits = bit_logits.reshape(-1, num_bits)
    all_bits = code_bits(torch.arange(num_codes, device=logits.device), num_bits, logits.dtype)  # [C, H]
    log_g = F.logsigmoid(-logits).sum(-1, keepdim=True) + logits @ all_bits.T  # [T, C]
    probs_g = log_g.exp()
    # scatter into the compute dtype rather than F.one_hot, which would add an int64 T x C tensor
    one_hot = torch.zeros_like(probs_g).scatter_(1, codes.reshape(-1, 1).long(), 1.0)
    output = (one_hot + probs_g - probs_g.detach()).to(weight.dtype) @ weight
    return output.reshape(*lead_shape, weight.shape[-1])
