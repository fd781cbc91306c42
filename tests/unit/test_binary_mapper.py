"""Binary Mapper sampling and the chunked post-sampler against the dense T x C reference."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from megatron_free.model.binary_mapper import (
    binary_mapper_post_sampler,
    code_bits,
    dense_binary_mapper_reference,
)
from megatron_free.model.latent_rng import posterior_codes

TOL = dict(atol=1e-10, rtol=1e-10)


def _draw(logits, seed):
    """Codes for [T, H] logits: one sample's posterior draw (the latent's own RNG)."""
    return posterior_codes(logits[None], torch.tensor([seed]), torch.arange(logits.shape[0])[None])[0]


def _inputs(num_tokens, num_bits, hidden, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(num_tokens, num_bits, generator=gen, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(2**num_bits, hidden, generator=gen, dtype=torch.float64).requires_grad_()
    codes = _draw(logits, seed + 1)
    grad_out = torch.randn(num_tokens, hidden, generator=gen, dtype=torch.float64)
    return logits, codes, weight, grad_out


def _run(fn, logits, weight, grad_out):
    """Output and (logit grad, weight grad) of fn(logits, weight) under the upstream gradient grad_out."""
    logits.grad = weight.grad = None
    out = fn(logits, weight)
    out.backward(grad_out)
    return out.detach(), logits.grad.clone(), weight.grad.clone()


def test_dense_reference_matches_product_formula():
    """Scope: the dense reference's gradient equals one built from G = prod_h p^u (1-p)^(1-u) directly."""
    logits, codes, weight, grad_out = _inputs(6, 4, 3)

    def product_form(o, w):
        p = torch.sigmoid(o).unsqueeze(1)  # [T, 1, H]
        u = code_bits(torch.arange(16), 4, o.dtype)  # [C, H]
        g = torch.where(u.bool(), p, 1 - p).prod(-1)  # [T, C]
        y = F.one_hot(codes, 16).to(o.dtype)
        return (y + g - g.detach()) @ w

    expected = _run(product_form, logits, weight, grad_out)
    actual = _run(lambda o, w: dense_binary_mapper_reference(o, codes, w), logits, weight, grad_out)
    for a, e in zip(actual, expected):
        assert_close(a, e, **TOL)


@pytest.mark.parametrize("num_bits", [4, 8])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 100, 4096])
def test_post_sampler_matches_dense(num_bits, chunk_size):
    """Scope: chunked output, logit grad and weight grad equal the dense reference to 1e-10 in float64."""
    logits, codes, weight, grad_out = _inputs(37, num_bits, 5, seed=num_bits)
    expected = _run(lambda o, w: dense_binary_mapper_reference(o, codes, w), logits, weight, grad_out)
    actual = _run(lambda o, w: binary_mapper_post_sampler(o, codes, w, chunk_size=chunk_size), logits, weight, grad_out)
    assert torch.equal(actual[0], weight.detach()[codes])  # forward is exactly the row gather
    for a, e in zip(actual, expected):
        assert_close(a, e, **TOL)


def test_post_sampler_large_logits_stable():
    """Scope: saturated logits (|o| up to 40) give finite gradients equal to the dense reference."""
    logits, codes, weight, grad_out = _inputs(20, 8, 4, seed=3, scale=20.0)
    expected = _run(lambda o, w: dense_binary_mapper_reference(o, codes, w), logits, weight, grad_out)
    actual = _run(lambda o, w: binary_mapper_post_sampler(o, codes, w, chunk_size=50), logits, weight, grad_out)
    assert torch.isfinite(actual[1]).all()
    for a, e in zip(actual, expected):
        assert_close(a, e, **TOL)


@pytest.mark.parametrize("split", [128, 100])
def test_tensor_parallel_row_shards(split):
    """Scope: 2 row shards (offsets 0 and split) sum/concatenate to the unsharded output and gradients."""
    logits, codes, weight, grad_out = _inputs(29, 8, 6, seed=5)
    full = _run(lambda o, w: binary_mapper_post_sampler(o, codes, w, chunk_size=9), logits, weight, grad_out)
    shards = [weight.detach()[:split].clone().requires_grad_(), weight.detach()[split:].clone().requires_grad_()]
    parts = []
    for shard, offset in zip(shards, [0, split]):
        parts.append(
            _run(
                lambda o, w: binary_mapper_post_sampler(o, codes, w, code_offset=offset, chunk_size=9),
                logits,
                shard,
                grad_out,
            )
        )
    assert_close(parts[0][0] + parts[1][0], full[0], **TOL)  # what reduce_from_tensor_model_parallel_region does
    assert_close(parts[0][1] + parts[1][1], full[1], **TOL)  # what copy_to_tensor_model_parallel_region does
    assert_close(torch.cat([parts[0][2], parts[1][2]]), full[2], **TOL)


def test_leading_batch_dims():
    """Scope: [S, B, H] logits and [S, B] codes give [S, B, D] equal to the flattened call."""
    logits, codes, weight, grad_out = _inputs(12, 4, 3, seed=7)
    flat = _run(lambda o, w: binary_mapper_post_sampler(o, codes, w, chunk_size=5), logits, weight, grad_out)
    batched = _run(
        lambda o, w: binary_mapper_post_sampler(o.view(4, 3, 4), codes.view(4, 3), w, chunk_size=5).view(12, 3),
        logits,
        weight,
        grad_out,
    )
    for a, e in zip(batched, flat):
        assert_close(a, e, **TOL)
    assert binary_mapper_post_sampler(logits.view(4, 3, 4), codes.view(4, 3), weight).shape == (4, 3, 3)


def test_no_logits_is_row_gather():
    """Scope: bit_logits=None or without grad gives the row gather and an embedding weight grad only."""
    _, codes, weight, grad_out = _inputs(10, 4, 3, seed=9)
    out = binary_mapper_post_sampler(None, codes, weight)
    assert torch.equal(out, weight.detach()[codes])
    out.backward(grad_out)
    expected = torch.zeros_like(weight).index_add_(0, codes, grad_out)
    assert_close(weight.grad, expected, **TOL)
    frozen_logits = torch.randn(10, 4, dtype=torch.float64)
    assert torch.equal(binary_mapper_post_sampler(frozen_logits, codes, weight), out.detach())


def test_float32_and_bfloat16_dtypes():
    """Scope: low-precision logits get gradients in their own dtype, close to the float64 result."""
    logits, codes, weight, grad_out = _inputs(16, 6, 4, seed=11)
    ref = _run(lambda o, w: binary_mapper_post_sampler(o, codes, w, chunk_size=10), logits, weight, grad_out)
    low = logits.detach().to(torch.bfloat16).requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    out = binary_mapper_post_sampler(low, codes, w32, chunk_size=10)
    out.backward(grad_out.float())
    assert low.grad.dtype == torch.bfloat16 and w32.grad.dtype == torch.float32
    assert_close(low.grad.double(), ref[1], atol=0.05, rtol=0.05)


def test_chunking_large_code_space():
    """Scope: H=16 (C=65536), T=64 forward/backward runs chunked and agrees across chunk sizes."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 16, generator=gen).requires_grad_()
    weight = torch.randn(2**16, 8, generator=gen).requires_grad_()
    codes = _draw(logits, 1)
    grad_out = torch.randn(64, 8, generator=gen)
    grads = [
        _run(lambda o, w: binary_mapper_post_sampler(o, codes, w, chunk_size=c), logits, weight, grad_out)[1]
        for c in (4096, 5000)
    ]
    assert torch.isfinite(grads[0]).all()
    assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
