"""The latent's stateless RNG: bit order, distributions, and draws that depend only on (seed, position, bit)."""

import torch
from torch.testing import assert_close

from megatron_free.model.binary_mapper import code_bits
from megatron_free.model.latent_rng import POSTERIOR_STREAM, latent_uniforms, posterior_codes, prior_codes


def _positions(batch, seq_len):
    return torch.arange(seq_len).expand(batch, seq_len)


def test_bit_order():
    """Bit h has weight 2^h: only bit 2 strongly on -> code 4, and code_bits inverts it."""
    logits = torch.full((1, 5, 4), -50.0)
    logits[..., 2] = 50.0
    assert torch.equal(posterior_codes(logits, torch.tensor([7]), _positions(1, 5)), torch.full((1, 5), 4))
    assert code_bits(torch.tensor([4]), 4).tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_frequencies():
    """Bit frequencies of posterior codes match sigmoid(logits); prior codes are uniform over C."""
    probs = torch.tensor([0.1, 0.5, 0.8, 0.97])
    logits = torch.logit(probs).expand(8, 25_000, 4)
    seeds, positions = torch.arange(8), _positions(8, 25_000)
    bits = code_bits(posterior_codes(logits, seeds, positions), 4)
    assert_close(bits.reshape(-1, 4).mean(0), probs, atol=5e-3, rtol=0)  # 5 sigma at n = 2e5
    counts = torch.bincount(prior_codes(seeds, positions[:, :20_000], 4).reshape(-1), minlength=16)
    assert_close(counts.double() / 160_000, torch.full((16,), 1 / 16, dtype=torch.float64), atol=3e-3, rtol=0)


def test_draws_depend_on_seed_and_position_only():
    """A sample's codes are the same whatever else is in the batch and wherever its chunk starts;
    another seed, another position or the other stream draws other numbers; no global RNG is used."""
    logits = torch.randn(3, 40, 12)
    seeds = torch.tensor([5, 2**40 + 5, 123456789])
    state = torch.get_rng_state()
    whole = posterior_codes(logits, seeds, _positions(3, 40))
    assert torch.equal(torch.get_rng_state(), state)
    alone = posterior_codes(logits[1:2, 10:], seeds[1:2], _positions(1, 40)[:, 10:])
    assert torch.equal(alone, whole[1:2, 10:])
    assert not torch.equal(whole[0], whole[1])  # the high 32 bits of a seed count
    u = latent_uniforms(seeds, _positions(3, 40), 12, POSTERIOR_STREAM)
    assert u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
    assert (u[:, 1:] != u[:, :-1]).float().mean() > 0.99
    assert not torch.equal(prior_codes(seeds, _positions(3, 40), 12), prior_codes(seeds + 1, _positions(3, 40), 12))
