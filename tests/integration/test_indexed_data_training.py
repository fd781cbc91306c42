"""Training reads Megatron indexed datasets: text -> megatron-free-preprocess -> .bin/.idx ->
pretraining through megatron-core's GPTDataset with a two-dataset blend, and --mock-data."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.harness import run_ranks

SHAKESPEARE = Path(__file__).resolve().parents[2] / "data" / "tinyshakespeare.txt"


def _preprocess(text_file, prefix):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_free.data.preprocess",
            "--input",
            str(text_file),
            "--input-format",
            "text-lines",
            "--tokenizer-type",
            "ByteTokenizer",
            "--append-eod",
            "--output-prefix",
            str(prefix),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return f"{prefix}_text_document"


def _train(data_args, iters):
    from megatron_free.arguments import parse_args
    from megatron_free.pretrain import setup
    from megatron_free.run_config import batch_config
    from megatron_free.training.loop import train_step
    from megatron_free.training.step import make_forward_step

    args = parse_args(
        [
            *data_args,
            "--seq-length",
            "32",
            "--num-layers",
            "2",
            "--hidden-size",
            "64",
            "--num-attention-heads",
            "4",
            "--latent-bits",
            "4",
            "--micro-batch-size",
            "4",
            "--global-batch-size",
            "8",
            "--train-iters",
            str(iters),
            "--lr",
            "0.003",
            "--lr-decay-style",
            "constant",
            "--make-vocab-size-divisible-by",
            "16",
        ],
        world_size=torch.distributed.get_world_size(),
    )
    chunks, optimizer, scheduler, state, train_iter, _, _ = setup(args)
    losses = []
    for _ in range(iters):
        report, _, _ = train_step(
            make_forward_step(kl_loss_scale=0.5), train_iter, chunks, optimizer, batch_config(args), args.clip_grad
        )
        losses.append(report["lm loss"])
    return losses


@pytest.mark.slow
def test_blended_indexed_datasets_train(tmp_path):
    """A 0.7/0.3 blend of two preprocessed halves of tiny-shakespeare trains; the loss falls."""
    lines = SHAKESPEARE.read_text().splitlines()
    half = len(lines) // 2
    (tmp_path / "a.txt").write_text("\n".join(lines[:half]))
    (tmp_path / "b.txt").write_text("\n".join(lines[half:]))
    a = _preprocess(tmp_path / "a.txt", tmp_path / "a")
    b = _preprocess(tmp_path / "b.txt", tmp_path / "b")
    data_args = [
        "--data-path",
        "0.7",
        a,
        "0.3",
        b,
        "--split",
        "98,2,0",
        "--tokenizer-type",
        "ByteTokenizer",
        "--data-cache-path",
        str(tmp_path / "cache"),
    ]
    (losses,) = run_ranks(1, _train, data_args, 12)
    assert losses[-1] < losses[0] - 0.5
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_mock_data_trains():
    """--mock-data runs megatron-core's MockGPTDataset through the same loop."""
    (losses,) = run_ranks(1, _train, ["--mock-data", "--vocab-size", "100"], 3)
    assert all(loss == loss for loss in losses)


def test_missing_data_path_is_one_line_error(tmp_path):
    """--data-path naming a missing prefix stops with an error naming the file."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_free.pretrain",
            "--data-path",
            str(tmp_path / "nope"),
            "--tokenizer-type",
            "ByteTokenizer",
            "--train-iters",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --data-path: {tmp_path / 'nope'}.bin does not exist"
