"""Validation of the Free Transformer: the posterior and prior cross-entropies, the KL and the
importance-weighted estimate of -log P(S) are the same numbers under TP, SP, PP and DP as on one rank."""

import math

import pytest
from torch.testing import assert_close

from tests.harness import run_ranks
from tests.tiny import tiny_args


def _validate(extra):
    """Validation results of the tiny model after two training iterations."""
    import torch

    from megatron_free.pretrain import setup
    from megatron_free.run_config import loop_config
    from megatron_free.training.loop import evaluate, train_step
    from megatron_free.training.step import make_forward_step

    args = tiny_args(torch.distributed.get_world_size(), "--eval-interval", "1", "--eval-iters", "2", *extra)
    chunks, optimizer, scheduler, _, train_iter, valid_iter, _ = setup(args)
    config = loop_config(args)
    for _ in range(2):
        train_step(
            make_forward_step(kl_loss_scale=1.0 / args.num_microbatches),
            train_iter,
            chunks,
            optimizer,
            config.batch,
            config.clip_grad,
        )
        scheduler.step(increment=args.global_batch_size)
    return evaluate(chunks, valid_iter, config.validation, config.batch)


@pytest.fixture(scope="module")
def one_rank():
    (results,) = run_ranks(1, _validate, [])
    return results


def test_one_rank_reports_the_importance_weighted_loss(one_rank):
    assert set(one_rank) == {"posterior lm loss", "prior lm loss", "kl", "iwae lm loss"}
    assert all(math.isfinite(v) for v in one_rank.values())
    (without,) = run_ranks(1, _validate, ["--eval-latent-samples", "0"])
    assert "iwae lm loss" not in without
    assert without["posterior lm loss"] == one_rank["posterior lm loss"]
    (one_draw,) = run_ranks(1, _validate, ["--eval-latent-samples", "1"])
    assert one_draw["iwae lm loss"] != one_rank["iwae lm loss"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        ["--tensor-model-parallel-size", "2"],
        ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
        ["--pipeline-model-parallel-size", "2"],
        [],  # DP2
    ],
    ids=["tp2", "tp2-sp", "pp2", "dp2"],
)
def test_validation_is_layout_independent(one_rank, layout):
    for results in run_ranks(2, _validate, layout):
        assert set(results) == set(one_rank)
        for name, value in one_rank.items():
            assert_close(results[name], value, atol=1e-5, rtol=1e-5, msg=name)
