"""Unit tests for megatron_free/data/toy.py (the paper's toy task generator and dataset)."""

import collections

import numpy as np
import pytest
import torch

from megatron_free.data.tokenizers import ByteTokenizer, CharacterTokenizer
from megatron_free.data.toy import (
    BODY_LENGTH,
    LETTERS,
    NUM_POSITIONS,
    TOY_SEQ_LENGTH,
    ToyTaskDataset,
    generate_toy_sample,
    parse_toy_sample,
)

N = 20_000


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return [generate_toy_sample(rng) for _ in range(N)]


def test_sample_layout(samples):
    """Every sample: "<letter>>" + 64 characters, the run of 8 at its position unless replaced by noise."""
    for s in samples[:2000]:
        assert len(s.text) == 66 and s.text[0] == s.letter and s.text[1] == ">"
        body = s.text[2:]
        for i, c in enumerate(body):
            expected = s.letter if s.position <= i < s.position + 8 else "_"
            assert c == ("!" if i in s.noise else expected)


def test_statistics(samples):
    """Letters and positions uniform, noise rate 1/16 per body character."""
    letters = collections.Counter(s.letter for s in samples)
    assert set(letters) == set(LETTERS)
    assert max(abs(n / N - 1 / 26) for n in letters.values()) < 0.15 / 26
    positions = collections.Counter(s.position for s in samples)
    assert set(positions) == set(range(NUM_POSITIONS)) == set(range(57))
    assert max(abs(n / N - 1 / 57) for n in positions.values()) < 0.25 / 57
    noise_rate = sum(len(s.noise) for s in samples) / (N * BODY_LENGTH)
    assert abs(noise_rate - 1 / 16) < 0.002
    assert sum(s.text.count("!") for s in samples) == sum(len(s.noise) for s in samples)


def test_parse_recovers_the_position(samples):
    """parse_toy_sample finds the target position; it differs only when "!" at the run's edges makes it ambiguous."""
    parsed = [parse_toy_sample(s.text) for s in samples]
    assert sum(p is None for p in parsed) <= 2  # only when noise hides all 8 letters: (1/16)^8
    exact = sum(p == s.position for p, s in zip(parsed, samples))
    assert exact / N > 0.98
    for p, s in zip(parsed, samples):
        if p is not None and p != s.position:
            assert p < s.position and all(s.position - k - 1 in s.noise for k in range(s.position - p))


@pytest.mark.parametrize(
    "text",
    [
        "K>" + "_" * 64 + "_",  # too long
        "K>" + "_" * 64,  # no run
        "k>" + "_" * 10 + "k" * 8 + "_" * 46,  # not a capital letter
        "K<" + "_" * 10 + "K" * 8 + "_" * 46,  # prompt without ">"
        "K>" + "_" * 10 + "Q" * 8 + "_" * 46,  # another letter
        "K>" + "_" * 10 + "K" * 8 + "_" * 10 + "K" + "_" * 35,  # a second run
        "K>" + "_" * 10 + "KKK_KKKK" + "_" * 46,  # a blank inside the run
        "K>" + "_" * 10 + "K" * 9 + "_" * 45,  # a run of 9
    ],
)
def test_parse_rejects_malformed(text):
    """Malformed texts (length, prompt, foreign letters, two runs, a gap) give None."""
    assert parse_toy_sample(text) is None


def test_parse_accepts_noise():
    """Noise inside or at the edge of the run is allowed."""
    assert parse_toy_sample("K>" + "_" * 10 + "KK!KKKKK" + "_" * 46) == 10
    assert parse_toy_sample("K>" + "_" * 10 + "!KKKKKKK" + "_" * 46) == 10
    assert parse_toy_sample("K>" + "KKKKKKKK" + "_" * 55 + "!") == 0
    assert parse_toy_sample("K>" + "_" * 56 + "KKKKKKK!") == 56


def test_dataset_samples():
    """ToyTaskDataset: int64 tokens/labels/position_ids of 66, labels = tokens shifted, eod last, all in loss."""
    ds = ToyTaskDataset(num_samples=100, seed=3)
    assert len(ds) == 100 and ds.seq_length == TOY_SEQ_LENGTH == 66
    tok = CharacterTokenizer()
    for i in (0, 1, 99):
        item = ds[i]
        assert set(item) == {"tokens", "labels", "loss_mask", "position_ids"}
        for key in ("tokens", "labels", "position_ids"):
            assert item[key].dtype == torch.int64 and item[key].shape == (66,)
        assert torch.equal(item["tokens"][1:], item["labels"][:-1])
        assert item["labels"][-1] == tok.eod
        assert torch.equal(item["position_ids"], torch.arange(66))
        assert item["loss_mask"].shape == (66,) and bool((item["loss_mask"] == 1).all())
        text = tok.detokenize(item["tokens"].tolist() + item["labels"][-1:].tolist())
        assert text == ds.sample(i).text and parse_toy_sample(text) is not None
    with pytest.raises(IndexError):
        ds[100]


def test_dataset_is_a_function_of_seed_and_index():
    """Sample i depends on (seed, i) only: same across instances and access order, different across seeds."""
    a, b = ToyTaskDataset(1000, seed=5), ToyTaskDataset(1000, seed=5)
    for i in (999, 0, 500):
        assert torch.equal(a[i]["tokens"], b[i]["tokens"])
    assert ToyTaskDataset(10, seed=5).sample(7) == a.sample(7) == generate_toy_sample((5, 7))
    other = ToyTaskDataset(1000, seed=6)
    assert sum(a.sample(i) != other.sample(i) for i in range(50)) >= 49
    batch = next(iter(torch.utils.data.DataLoader(a, batch_size=8, shuffle=False)))
    assert batch["tokens"].shape == (8, 66) and batch["tokens"].dtype == torch.int64


def test_dataset_tokenizers():
    """ByteTokenizer also has one token per character; a tokenizer that merges characters is refused."""
    item = ToyTaskDataset(4, seed=0, tokenizer=ByteTokenizer())[2]
    assert item["labels"][-1] == 256 and item["tokens"].shape == (66,)

    class Merging(ByteTokenizer):
        def tokenize(self, text):
            return super().tokenize(text)[::2]

    with pytest.raises(ValueError, match="expected 67"):
        ToyTaskDataset(4, seed=0, tokenizer=Merging())[0]
