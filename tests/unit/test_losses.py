"""KL of the Binary Mapper posterior to the uniform prior, and the per-token free-bits hinge."""

import math

import pytest
import torch
from torch.testing import assert_close

from megatron_free.model.binary_mapper import code_bits
from megatron_free.model.losses import bits_to_nats, free_bits_kl, kl_per_token, nats_to_bits


def _brute_force_kl(logits):
    """KL(Q || Uniform(C)) from the explicit distribution over all 2^H codes: [T, H] -> [T]."""
    num_bits = logits.shape[-1]
    u = code_bits(torch.arange(2**num_bits), num_bits, logits.dtype)  # [C, H]
    log_p, log_1mp = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    log_q = log_p @ u.T + log_1mp @ (1 - u).T  # [T, C]
    q = log_q.exp()
    return (q * (log_q + num_bits * math.log(2))).sum(-1)


@pytest.mark.parametrize("num_bits", [1, 4, 10])
def test_kl_matches_brute_force(num_bits):
    """Scope: kl_per_token equals the sum over all codes to 1e-10 in float64, |o| up to 30."""
    gen = torch.Generator().manual_seed(num_bits)
    logits = torch.cat(
        [
            torch.randn(20, num_bits, generator=gen, dtype=torch.float64),
            30 * (2 * torch.rand(20, num_bits, generator=gen, dtype=torch.float64) - 1),
            torch.full((1, num_bits), 30.0, dtype=torch.float64),
            torch.full((1, num_bits), -30.0, dtype=torch.float64),
            torch.zeros(1, num_bits, dtype=torch.float64),
        ]
    )
    assert_close(kl_per_token(logits), _brute_force_kl(logits), atol=1e-10, rtol=1e-10)


def test_kl_extremes_and_gradient():
    """Scope: KL is finite at |o|=100 (-> H log 2), zero at o=0, and autograd matches finite differences."""
    big = torch.tensor([[100.0, -100.0, 100.0]], dtype=torch.float64, requires_grad=True)
    kl = kl_per_token(big)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(big.grad).all()
    assert_close(kl, torch.tensor([3 * math.log(2)], dtype=torch.float64))
    assert kl_per_token(torch.zeros(2, 5)).abs().max() < 1e-6
    assert kl_per_token(torch.zeros(2, 5, dtype=torch.bfloat16)).dtype == torch.float32
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kl_per_token, (logits,))


def test_free_bits_hinge_per_token():
    """Scope: the hinge applies per token before the mean (differs from hinge of the mean)."""
    kl_t = torch.tensor([0.0, 2.0])  # mean 1.0 = kappa: hinge-of-mean is 0, mean-of-hinge is 0.5
    result = free_bits_kl(kl_t, kappa_nats=1.0)
    assert_close(result.loss, torch.tensor(0.5))
    assert_close(result.kl_bits, torch.tensor(1.0 / math.log(2)))
    assert_close(result.hinged_kl_bits, torch.tensor(0.5 / math.log(2)))
    assert_close(result.frac_above_kappa, torch.tensor(0.5))
    assert result.num_tokens.item() == 2


def test_free_bits_masked_mean_and_fraction():
    """Scope: masked tokens are ignored in loss and stats; gradient is zero below kappa and on masked tokens."""
    kl_t = torch.tensor([[0.5, 3.0, 9.0], [2.0, 0.1, 4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    result = free_bits_kl(kl_t, kappa_nats=1.0, loss_mask=mask)
    # counted: 0.5, 3.0, 2.0, 0.1, 4.0 -> hinged 0, 2, 1, 0, 3
    assert_close(result.loss, torch.tensor(6.0 / 5))
    assert_close(result.frac_above_kappa, torch.tensor(3 / 5))
    assert_close(result.kl_bits, torch.tensor(9.6 / 5 / math.log(2)))
    result.loss.backward()
    assert_close(kl_t.grad, torch.tensor([[0.0, 0.2, 0.0], [0.2, 0.0, 0.2]]))
    assert free_bits_kl(kl_t, 1.0, loss_mask=torch.zeros(2, 3)).loss.item() == 0.0


def test_bits_nats_round_trip():
    """Scope: bits_to_nats / nats_to_bits are inverse and 1 bit = log 2 nats."""
    assert bits_to_nats(1.0) == math.log(2)
    assert nats_to_bits(bits_to_nats(0.125)) == pytest.approx(0.125, rel=1e-15)


def test_codes_log_prob_is_a_distribution_over_codes():
    """exp(log Q(code)) over all 2^H codes sums to 1, and matches the product of bit probabilities."""
    from megatron_free.model.losses import codes_log_prob

    logits = torch.randn(3, 5, dtype=torch.float64)
    codes = torch.arange(2**5)
    log_q = codes_log_prob(logits[:, None, :].expand(3, 32, 5), codes[None].expand(3, 32))
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    p = torch.sigmoid(logits[0])
    bits = code_bits(torch.tensor(13), 5, torch.float64)
    torch.testing.assert_close(log_q[0, 13], torch.log(torch.where(bits.bool(), p, 1 - p)).sum())


def test_importance_weighted_estimate():
    """With Q the exact posterior every weight is log P(S) (exact for any K); with another Q the estimate
    is below log P(S) in expectation and rises toward it with K (IWAE); bad shapes are refused."""
    from megatron_free.model.losses import importance_weighted_log_likelihood

    gen = torch.Generator().manual_seed(0)
    num_codes = 16
    log_lik = torch.randn(num_codes, generator=gen, dtype=torch.float64) * 3  # log P(S | Z = z)
    log_prior = -math.log(num_codes)
    log_p = torch.logsumexp(log_lik + log_prior, 0)  # exact log P(S)
    posterior = log_lik + log_prior - log_p
    z = torch.multinomial(posterior.exp(), 4, replacement=True, generator=gen)
    exact = importance_weighted_log_likelihood(log_lik[z][:, None], posterior[z][:, None], log_prior)
    torch.testing.assert_close(exact, log_p[None])

    q = torch.log_softmax(torch.randn(num_codes, generator=gen, dtype=torch.float64), 0)
    means = []
    for k in (1, 4, 64):
        z = torch.multinomial(q.exp(), k * 4000, replacement=True, generator=gen).reshape(k, 4000)
        means.append(importance_weighted_log_likelihood(log_lik[z], q[z], log_prior).mean().item())
    assert means[0] < means[1] < means[2] < log_p.item() + 1e-3
    assert log_p.item() - means[2] < 0.1 * (log_p.item() - means[0])
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        importance_weighted_log_likelihood(log_lik[:3], q[:3], log_prior)
