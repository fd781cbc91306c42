"""The latent's random numbers: a stateless counter-based hash of (seed, position, bit), on any device.

Every code the model draws, in training, in validation, in megatron-free-generate and in the HuggingFace
export, comes from here, so that

  * a sample gets the same Z under any TP/PP/DP layout (the draw depends on the sample's seed and the token's
    position only, never on which rank holds the sample or in what batch);
  * nothing leaves the device: the draw is integer arithmetic on the logits' device, no host RNG, no sync;
  * a checkpoint and its HF export draw the same Z for the same seeds.

This file imports only torch: the HF export copies it beside its modeling code.

The hash is lowbias32 (a 32-bit integer finalizer) on int64 tensors, so that no product overflows:
uniform(seed, position, bit) = hash(key(seed, stream) ^ hash(position + golden) ^ bit * prime) / 2^32,
with one key per sample and stream (posterior draws and prior draws of one sample are independent).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "POSTERIOR_STREAM",
    "PRIOR_STREAM",
    "latent_uniforms",
    "posterior_codes",
    "prior_codes",
    "bits_to_codes",
    "hash32",
    "sample_seeds",
    "sequence_positions",
]

_MASK32 = 0xFFFFFFFF
POSTERIOR_STREAM, PRIOR_STREAM = 0x51ED270B, 0x2C1B3C6D


def _mul32(x: Tensor, m: int) -> Tensor:
    """(x * m) mod 2^32 for x in [0, 2^32), in two 16-bit halves of m (products stay below 2^49)."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """lowbias32 of the low 32 bits of an int64 tensor, in [0, 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def latent_uniforms(seeds: Tensor, positions: Tensor, num_bits: int, stream: int) -> Tensor:
    """U[0, 1) float64 [b, s, H] from per-sample seeds [b] (int64) and positions [b, s], 32 random bits each."""
    seeds = seeds.long()
    key = hash32(hash32(seeds & _MASK32) ^ ((seeds >> 32) & _MASK32) ^ stream)  # [b]
    key = hash32(key[:, None] ^ hash32(positions.long() + 0x9E3779B9))  # [b, s]
    bits = torch.arange(1, num_bits + 1, device=seeds.device, dtype=torch.long)
    draws = hash32(key[..., None] ^ _mul32(bits, 0x85EBCA6B))  # [b, s, H]
    return draws.double() / 2.0**32


def bits_to_codes(bits: Tensor) -> Tensor:
    """[..., H] of 0/1 -> [...] int64 codes; bit h has weight 2^h (binary_mapper's order)."""
    shifts = torch.arange(bits.shape[-1], device=bits.device)
    return (bits.long() << shifts).sum(-1)


def posterior_codes(bit_logits: Tensor, seeds: Tensor, positions: Tensor) -> Tensor:
    """Codes with bit h ~ Bernoulli(sigmoid(bit_logits[..., h])): logits [b, s, H] -> codes [b, s]."""
    probs = torch.sigmoid(bit_logits.detach().double())
    uniforms = latent_uniforms(seeds, positions, bit_logits.shape[-1], POSTERIOR_STREAM)
    return bits_to_codes(uniforms < probs)


def prior_codes(seeds: Tensor, positions: Tensor, num_bits: int) -> Tensor:
    """Codes uniform over [0, 2^num_bits): [b, s]."""
    return bits_to_codes(latent_uniforms(seeds, positions, num_bits, PRIOR_STREAM) < 0.5)


def sample_seeds(latent_seed: int, batch_size: int, device=None) -> Tensor:
    """[b] int64 per-sample seeds for one latent seed: hash(seed) in the high 32 bits, the sample's
    index in the batch in the low ones (samples differ; the same seed gives the same Z everywhere)."""
    seed = torch.as_tensor(latent_seed, dtype=torch.long, device=device)
    return ((hash32(seed) & 0x7FFFFFFF) << 32) | torch.arange(batch_size, device=device)


def sequence_positions(batch_size: int, seq_len: int, device=None) -> Tensor:
    """[b, s] positions 0 .. s-1 of unpadded sequences: the RNG's counter for each token."""
    return torch.arange(seq_len, device=device).expand(batch_size, seq_len)
