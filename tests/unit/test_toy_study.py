"""Unit tests for the toy study's measures (megatron_free/inference/toy_study.py) on hand-made strings."""

import math

import numpy as np
import pytest

from megatron_free.data.toy import generate_toy_sample
from megatron_free.inference.toy_study import (
    bootstrap_interval,
    noise_agreement,
    noise_positions,
    position_agreement,
    position_distance,
    summarize_groups,
    well_formed_rate,
)


def make(letter="K", position=0, noise=(), run=8):
    """A toy text: the run of ``run`` letters at ``position``, "!" at the ``noise`` body indices."""
    body = ["_"] * 64
    body[position : position + run] = letter * run
    for i in noise:
        body[i] = "!"
    return f"{letter}>" + "".join(body)


def test_noise_positions():
    """The "!" indices are counted in the body, after the 2-character prompt."""
    assert noise_positions(make(noise=(0, 20, 63))) == {0, 20, 63}
    assert noise_positions(make()) == frozenset()


def test_well_formed_rate():
    """Right length, one run of the prompt's letter (noise allowed inside it), nothing else."""
    good = [make(position=3), make(position=56, noise=(56, 10))]
    bad = [
        make(position=3)[:-1],  # 65 characters
        make(position=3, run=7),  # a run of 7 with blanks on both sides
        make(position=3, run=9),  # a run of 9
        make(position=3).replace("_", "Q", 1),  # another letter
        "K>" + "_" * 64,  # no target
    ]
    assert well_formed_rate(good) == 1.0
    assert well_formed_rate(bad) == 0.0
    assert well_formed_rate(good + bad) == pytest.approx(2 / 7)
    assert math.isnan(well_formed_rate([]))


def test_well_formed_rate_of_the_data():
    """Every sample of the task itself is well formed."""
    texts = [generate_toy_sample((0, i)).text for i in range(500)]
    assert well_formed_rate(texts) == 1.0


def test_position_agreement_counts_pairs_within_groups_of_well_formed_samples():
    """Pairs are taken inside each group only; malformed samples take part in no pair."""
    group_a = [make(position=5), make(position=5, noise=(30,)), make(position=40)]
    group_b = [make(position=5), make(position=5)[:-1]]  # the second is malformed: no pair
    rate, pairs = position_agreement([group_a, group_b])
    assert pairs == 3  # group_a: 3 pairs; group_b: none
    assert rate == pytest.approx(1 / 3)
    assert position_distance([group_a, group_b]) == pytest.approx((0 + 35 + 35) / 3)
    # The same positions in different groups never count as agreeing.
    rate, pairs = position_agreement([[make(position=5)], [make(position=5)]])
    assert pairs == 0 and math.isnan(rate)


def test_position_agreement_allows_for_noise_on_the_run():
    """A run whose first letter is hidden by "!" is still at the same position."""
    rate, pairs = position_agreement([[make(position=12), make(position=12, noise=(12,))]])
    assert (rate, pairs) == (1.0, 1)


def test_noise_agreement():
    """Identical "!" sets and their Jaccard overlap, over all pairs (malformed samples included)."""
    same = [make(noise=(20, 30)), make(position=40, noise=(20, 30))]
    result = noise_agreement([same])
    assert result == {"noise_identical": 1.0, "noise_jaccard": 1.0, "pairs": 1}
    partial = [make(noise=(20, 30)), make(noise=(20, 31, 50))]  # |{20}| / |{20, 30, 31, 50}|
    result = noise_agreement([partial])
    assert result["noise_identical"] == 0.0 and result["noise_jaccard"] == pytest.approx(1 / 4)
    both_empty = [make(), make(position=9)]
    assert noise_agreement([both_empty])["noise_jaccard"] == 1.0
    result = noise_agreement([same, partial])
    assert result["pairs"] == 2 and result["noise_jaccard"] == pytest.approx(5 / 8)


def test_independent_samples_of_the_task_rarely_agree():
    """Data samples are independent: positions agree ~1/57 of the time, noise patterns almost never."""
    texts = [generate_toy_sample((1, i)).text for i in range(400)]
    groups = [texts[i : i + 8] for i in range(0, len(texts), 8)]
    summary = summarize_groups(groups)
    assert summary["samples"] == 400 and summary["pairs"] == 50 * 28
    assert summary["well_formed"] == 1.0
    assert summary["position_agreement"] < 0.05
    assert 15 < summary["position_distance"] < 23  # 19.0 expected for uniform positions
    assert summary["noise_identical"] < 0.02 and summary["noise_jaccard"] < 0.1
    # Groups of copies agree on everything.
    copies = summarize_groups([[t] * 4 for t in texts[:10]])
    assert copies["position_agreement"] == copies["noise_identical"] == copies["noise_jaccard"] == 1.0


def test_summary_of_random_strings_is_finite():
    """Garbage in (what a broken model emits): well-formed 0, agreement undefined, noise defined."""
    rng = np.random.default_rng(0)
    garbage = [["".join(rng.choice(list("_!KQ>"), size=66)) for _ in range(4)] for _ in range(3)]
    summary = summarize_groups(garbage)
    assert summary["well_formed"] == 0.0
    assert math.isnan(summary["position_agreement"]) and summary["position_pairs"] == 0
    assert math.isnan(summary["position_distance"])
    assert 0.0 <= summary["noise_jaccard"] <= 1.0


def test_bootstrap_pools_each_resample_as_summarize_groups_does():
    """Two groups: a resample is AA, AB or BB (1/4, 1/2, 1/4), so the 30 % and 70 % quantiles are
    AB's value, the pooled rate over both groups (4 of 6 well-formed), not the mean of their rates."""
    whole, broken = [make(position=p) for p in (0, 9, 20, 40)], [make()[:-1]] * 2
    assert summarize_groups([whole, broken])["well_formed"] == pytest.approx(4 / 6)
    assert bootstrap_interval([whole, broken], "well_formed", confidence=0.4) == pytest.approx((4 / 6, 4 / 6))
    assert bootstrap_interval([whole, broken], "well_formed") == pytest.approx((0.0, 1.0))
    assert bootstrap_interval([whole] * 5, "position_agreement") == pytest.approx((0.0, 0.0))


def test_bootstrap_resamples_groups_not_pairs():
    """Half the groups are copies (every pair agrees), half independent data samples (pairs rarely
    agree): the rate is ~0.5 and, with 20 groups, uncertain by about +-0.2. Resampling the 560 pairs
    as if independent would give about +-0.04."""
    texts = [generate_toy_sample((3, i)).text for i in range(80)]
    groups = [[t] * 8 for t in texts[:10]] + [texts[i : i + 8] for i in range(10, 80, 7)][:10]
    rate = summarize_groups(groups)["position_agreement"]
    low, high = bootstrap_interval(groups, "position_agreement")
    assert 0.4 < rate < 0.6
    assert low < rate - 0.12 and high > rate + 0.12 and 0.0 < low and high < 1.0


def test_bootstrap_interval_is_nan_where_nothing_can_be_measured():
    garbage = [["K>" + "_" * 64] * 3] * 4  # no run of the letter: no well-formed pair
    assert all(math.isnan(x) for x in bootstrap_interval(garbage, "position_agreement"))
    assert bootstrap_interval(garbage, "noise_jaccard") == pytest.approx((1.0, 1.0))  # no "!" anywhere
