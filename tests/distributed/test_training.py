"""Training through megatron_free.pretrain's setup and loop under DP (megatron DDP and the
distributed optimizer), TP and PP, against a single-rank run on the same global batches; and
dist_checkpointing checkpoints that reshard between layouts."""

import glob

import pytest
import torch
from torch.testing import assert_close

from tests.tiny import full_tensors, tiny_args


def _train(extra, save_dir=None, tensorboard_dir=None):
    """Trains per tiny_args + extra; returns (losses per iteration, full weights of this rank)."""
    from megatron_free.pretrain import setup
    from megatron_free.run_config import batch_config
    from megatron_free.training.loop import train_step
    from megatron_free.training.step import make_forward_step

    world = torch.distributed.get_world_size()
    more = list(extra)
    if save_dir:
        more += ["--save", save_dir]
    if tensorboard_dir:
        more += ["--tensorboard-dir", tensorboard_dir]
    args = tiny_args(world, *more)
    if tensorboard_dir or save_dir:
        from megatron_free.pretrain import run

        run(args)
        return None, None
    chunks, optimizer, scheduler, state, train_iter, _, _ = setup(args)
    losses = []
    for _ in range(args.train_iters):
        report, _, updated = train_step(
            make_forward_step(kl_loss_scale=1.0 / args.num_microbatches),
            train_iter,
            chunks,
            optimizer,
            batch_config(args),
            args.clip_grad,
        )
        assert updated
        scheduler.step(increment=args.global_batch_size)
        losses.append(report.get("lm loss"))
    return losses, full_tensors(chunks[0].module, use_grad=False)


def _merge(results):
    losses = next(r[0] for r in results if r[0][0] is not None)
    weights = {}
    for _, w in results:
        weights.update(w)
    return losses, weights


@pytest.fixture(scope="module")
def single_rank():
    from tests.harness import run_ranks

    return _merge(run_ranks(1, _train, []))


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        ["--use-distributed-optimizer"],  # DP2
        ["--tensor-model-parallel-size", "2", "--sequence-parallel"],  # TP2 + SP
        ["--pipeline-model-parallel-size", "2"],  # PP2
    ],
    ids=["dp2-distopt", "tp2-sp", "pp2"],
)
def test_training_matches_single_rank(ranks, single_rank, layout):
    """Four optimizer steps on 2 ranks give the single-rank losses and weights, and the loss falls."""
    losses, weights = _merge(ranks(2, _train, layout))
    ref_losses, ref_weights = single_rank
    assert ref_losses[-1] < ref_losses[0]
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    for name, ref in ref_weights.items():
        assert_close(weights[name], ref, rtol=1e-4, atol=1e-4, msg=name)


# The toy's 30 ids padded as by default: to 128 rows under TP1, 256 under TP2.
DEFAULT_PADDING = ["--make-vocab-size-divisible-by", "128"]


@pytest.mark.slow
def test_vocabulary_padding_changes_no_loss(ranks):
    """TP2 pads the vocabulary to twice TP1's rows; the padded ids get no probability, so the two
    runs have the same losses and the same weights on the tokenizer's ids."""
    ref_losses, ref_weights = _merge(ranks(1, _train, DEFAULT_PADDING))
    losses, weights = _merge(ranks(2, _train, [*DEFAULT_PADDING, "--tensor-model-parallel-size", "2"]))
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert weights["embedding.word_embeddings.weight"].shape[0] == 256
    assert ref_weights["embedding.word_embeddings.weight"].shape[0] == 128
    for name, ref in ref_weights.items():
        got = weights[name]
        if name == "embedding.word_embeddings.weight":  # tied: the output layer too
            got, ref = got[:30], ref[:30]
        assert_close(got, ref, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.slow
def test_tensorboard_and_checkpoint_written(ranks, tmp_path):
    """The pretrain run writes TensorBoard scalars and a Megatron-layout checkpoint."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ranks(
        2,
        _train,
        ["--tensor-model-parallel-size", "2", "--eval-interval", "2", "--eval-iters", "1"],
        str(tmp_path / "ckpt"),
        str(tmp_path / "tb"),
    )
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert (tmp_path / "ckpt" / "iter_0000004" / "metadata.json").exists()
    events = EventAccumulator(glob.glob(str(tmp_path / "tb" / "events.*"))[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "lm loss",
        "kl",
        "kl loss",
        "kl above kappa",
        "learning-rate",
        "grad-norm",
        "batch-size",
        "tokens-per-second",
        "throughput (TFLOP/s/GPU)",
        "validation/posterior lm loss",
        "validation/prior lm loss",
    ):
        assert tag in tags, tag
    assert len(events.Scalars("lm loss")) == 4


def _save_then_weights(extra, save_dir):
    """Two iterations (so the optimizer has state), saved; returns the saved weights."""
    from megatron_free.pretrain import setup
    from megatron_free.run_config import loop_config
    from megatron_free.training.loop import train
    from megatron_free.training.metrics import TrainingLogger

    args = tiny_args(torch.distributed.get_world_size(), *extra, "--save", save_dir, "--train-iters", "2")
    chunks, optimizer, scheduler, state, train_iter, *_ = setup(args)
    train(
        loop_config(args),
        chunks,
        optimizer,
        scheduler,
        train_iter,
        None,
        TrainingLogger(None, 1, 1.0, torch.distributed.get_world_size(), None),
        state,
    )
    return full_tensors(chunks[0].module, use_grad=False)


def _load_weights(extra, load_dir):
    from megatron_free.pretrain import setup

    # --train-iters as saved: the LR schedule must match the checkpoint's
    args = tiny_args(
        torch.distributed.get_world_size(), *extra, "--load", load_dir, "--seed", "99", "--train-iters", "2"
    )
    chunks, *_ = setup(args)
    return full_tensors(chunks[0].module, use_grad=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "saved",
    [
        ["--tensor-model-parallel-size", "2"],
        ["--pipeline-model-parallel-size", "2"],
    ],
    ids=["tp2-to-tp1", "pp2-to-pp1"],
)
def test_checkpoint_reshards(ranks, tmp_path, saved):
    """A checkpoint saved with TP2 or PP2 loads with TP1/PP1 (another seed) with identical weights."""
    saved_weights = {}
    for w in ranks(2, _save_then_weights, saved, str(tmp_path)):
        saved_weights.update(w)
    (loaded,) = ranks(1, _load_weights, [], str(tmp_path))
    assert loaded.keys() == saved_weights.keys()
    for name, value in saved_weights.items():
        assert torch.equal(loaded[name], value), name
