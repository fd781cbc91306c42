"""KL term of the Free Transformer loss (Fleuret 2025, Eq. 4-5), single-device math.

KL_t = KL(Q(Z_t | S) || Uniform(C)) with C = 2^H. The bits of Z_t are independent Bernoulli(sigmoid(o_{t,h})),
so KL_t = sum_h (log 2 - h_b(p_{t,h})), h_b the binary entropy in nats: O(H) per token, never a sum over C.

The loss term is the "free bits" hinge applied PER TOKEN before averaging: (1/T) sum_t max(0, KL_t - kappa),
with no extra weight. kappa is in nats here; the paper quotes it in bits (kappa_nats = bits * log 2).

For validation, log P(S) itself: E_prior[-log P(S|Z)] is only an upper bound of -log P(S) (Jensen) and the
posterior cross-entropy an ELBO-like number; the importance-weighted estimate with K posterior samples
(IWAE, Burda et al. 2016) tightens toward log P(S) as K grows and is what to set beside a baseline's loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_per_token",
    "free_bits_kl",
    "FreeBitsKL",
    "bits_to_nats",
    "nats_to_bits",
    "codes_log_prob",
    "importance_weighted_log_likelihood",
]

LOG2 = math.log(2.0)


def bits_to_nats(bits: float | Tensor) -> float | Tensor:
    """Convert an amount of information from bits to nats (x log 2)."""
    return bits * LOG2


def nats_to_bits(nats: float | Tensor) -> float | Tensor:
    """Convert an amount of information from nats to bits (x / log 2)."""
    return nats / LOG2


def kl_per_token(bit_logits: Tensor) -> Tensor:
    """KL(Q || Uniform(2^H)) in nats for bit logits [..., H] -> [...], in at least float32.

    Per bit, log 2 - h_b(p) with h_b(p) = softplus(o) - o p. It is even in o, and with a = |o|:
        log 2 - log1p(exp(-a)) - a sigmoid(-a)
    every term is bounded (no softplus(o) - o p cancellation of two large numbers), so it is finite and
    accurate for any |o| and has the right gradient a sigmoid(a) sigmoid(-a) sign(o).
    """
    a = bit_logits.to(torch.promote_types(bit_logits.dtype, torch.float32)).abs()
    per_bit = LOG2 - F.softplus(-a) - a * torch.sigmoid(-a)
    return per_bit.sum(-1)


class FreeBitsKL(NamedTuple):
    """The free-bits KL loss term and what to log about it (all means over the (masked) tokens)."""

    loss: Tensor  # mean_t max(0, KL_t - kappa), nats: the term added to the cross-entropy
    kl_bits: Tensor  # mean_t KL_t in bits, before the hinge (detached)
    hinged_kl_bits: Tensor  # the loss in bits (detached)
    frac_above_kappa: Tensor  # fraction of tokens with KL_t > kappa (detached)
    num_tokens: Tensor  # number of tokens averaged over (loss * num_tokens is the token sum)


def free_bits_kl(kl_t: Tensor, kappa_nats: float, loss_mask: Tensor | None = None) -> FreeBitsKL:
    """Per-token hinge max(0, KL_t - kappa) averaged over tokens, masked mean if loss_mask is given.

    kl_t: per-token KL in nats (from kl_per_token); loss_mask: same shape, 1 for tokens that count.
    Statistics are tensors (no host sync); call .item() where you log them.
    """
    if kappa_nats < 0:
        raise ValueError(f"kappa_nats={kappa_nats} must be >= 0")
    hinged = torch.clamp(kl_t - kappa_nats, min=0.0)
    above = (kl_t > kappa_nats).to(kl_t.dtype)
    if loss_mask is None:
        weights = torch.ones_like(kl_t)
    else:
        if loss_mask.shape != kl_t.shape:
            raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != kl_t shape {tuple(kl_t.shape)}")
        weights = loss_mask.to(kl_t.dtype)
    num_tokens = weights.sum()
    denom = num_tokens.clamp(min=1.0)  # an all-masked batch gives loss 0, not NaN

    def masked_mean(values: Tensor) -> Tensor:
        return (values * weights).sum() / denom

    loss = masked_mean(hinged)
    with torch.no_grad():
        return FreeBitsKL(
            loss=loss,
            kl_bits=nats_to_bits(masked_mean(kl_t.detach())),
            hinged_kl_bits=nats_to_bits(loss.detach()),
            frac_above_kappa=masked_mean(above),
            num_tokens=num_tokens.detach(),
        )


def codes_log_prob(bit_logits: Tensor, codes: Tensor) -> Tensor:
    """log Q(Z_t = code | S) for bit logits [..., H] and codes [...] -> [...] (float64): the bits are
    independent, bit h of the code (weight 2^h) drawn with probability sigmoid(o_h)."""
    logits = bit_logits.detach().double()
    bits = (codes.long().unsqueeze(-1) >> torch.arange(logits.shape[-1], device=codes.device)) & 1
    return torch.where(bits.bool(), F.logsigmoid(logits), F.logsigmoid(-logits)).sum(-1)


def importance_weighted_log_likelihood(log_likelihood: Tensor, log_q: Tensor, log_prior: float | Tensor) -> Tensor:
    """log (1/K) sum_k P(S|Z_k) P(Z_k) / Q(Z_k|S) for K samples Z_k ~ Q(Z|S), per sequence.

    log_likelihood, log_q: [K, N] (log P(S|Z_k) and log Q(Z_k|S) of N sequences); log_prior: log P(Z_k)
    (the uniform prior: -T H log 2). Returns [N]. Its expectation is a lower bound of log P(S) that rises
    toward it with K; K = 1 is the ELBO.
    """
    if log_likelihood.shape != log_q.shape or log_likelihood.dim() != 2:
        raise ValueError(
            f"log_likelihood {tuple(log_likelihood.shape)} and log_q {tuple(log_q.shape)} must both be [K, N]"
        )
    weights = log_likelihood.double() + log_prior - log_q.double()
    return torch.logsumexp(weights, dim=0) - math.log(weights.shape[0])
