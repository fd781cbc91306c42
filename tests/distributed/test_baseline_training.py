"""The baseline (--baseline) trains through the same pretrain code: TP2 on 2 ranks, TensorBoard
and validation with its plain 'lm loss', no KL anywhere."""

import glob

import pytest
import torch

from tests.tiny import tiny_args


def _run_baseline(tensorboard_dir):
    from megatron_free.pretrain import run

    run(
        tiny_args(
            torch.distributed.get_world_size(),
            "--baseline",
            "--tensor-model-parallel-size",
            "2",
            "--train-iters",
            "6",
            "--eval-interval",
            "3",
            "--eval-iters",
            "1",
            "--tensorboard-dir",
            tensorboard_dir,
        )
    )


@pytest.mark.slow
def test_baseline_trains_through_pretrain(ranks, tmp_path):
    """Six TP2 iterations of the baseline: the loss falls, no KL is logged, validation is 'lm loss'."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ranks(2, _run_baseline, str(tmp_path))
    events = EventAccumulator(glob.glob(str(tmp_path / "events.*"))[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "validation/lm loss" in tags and not any(tag.startswith("kl") for tag in tags)
    losses = [e.value for e in events.Scalars("lm loss")]
    assert len(losses) == 6 and losses[-1] < losses[0]
