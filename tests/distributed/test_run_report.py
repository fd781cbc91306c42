"""What pretrain.run prints on 2 ranks, checked against a single-rank model and the run's own
TensorBoard events: the arguments, the layout, the parameter counts (total, per pipeline stage, the
latent's share), the datasets, the log lines (timestamp, ETA, current learning rate and grad norm,
means over the log interval), the toy samples (also as TensorBoard text) and the end summary."""

import contextlib
import glob
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import TINY_PRETRAIN_ARGV, tiny_args

REPO = Path(__file__).resolve().parents[2]

RUN_FLAGS = [
    "--lr-decay-style",
    "linear",
    "--min-lr",
    "0.001",
    "--log-interval",
    "2",
    "--eval-interval",
    "2",
    "--eval-iters",
    "1",
    "--generate-samples",
    "3",
]


def _printed_by_run(extra, save_dir, tensorboard_dir):
    """pretrain.run on this rank; returns what it printed."""
    from megatron_free.pretrain import run

    args = tiny_args(
        torch.distributed.get_world_size(), *extra, "--save", save_dir, "--tensorboard-dir", tensorboard_dir
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run(args)
    return out.getvalue()


def _printed_by_setup(extra):
    from megatron_free.pretrain import setup

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        setup(tiny_args(torch.distributed.get_world_size(), *extra))
    return out.getvalue()


def _parameter_sizes():
    """{name: numel} of the single-rank model pretrain builds."""
    from megatron_free.pretrain import setup

    chunks, *_ = setup(tiny_args(1))
    return {name: p.numel() for name, p in chunks[0].module.named_parameters()}


@pytest.fixture(scope="module")
def single_rank_sizes():
    from tests.harness import run_ranks

    (sizes,) = run_ranks(1, _parameter_sizes)
    return sizes


def _count(text, pattern):
    return int(re.search(pattern, text, re.M)[1].replace(",", ""))


def _check_parameters(printed, sizes, stage_layers):
    """The printed counts against the single-rank model's parameters: the total, the latent's
    parts, and each stage's (blocks as given; the last stage with its copy of the tied
    embeddings)."""
    total = sum(sizes.values())
    assert _count(printed, r"^parameters: ([\d,]+) in all \(tied embeddings counted once\)$") == total
    latent = {
        part: sum(n for name, n in sizes.items() if any(f"latent.{m}" in name for m in members))
        for part, members in (
            ("encoder", ("encoder.", "zeta")),
            ("readout", ("readout_norm.", "readout.weight")),
            ("post_sampler", ("post_sampler",)),
        )
    }
    assert sum(latent.values()) == sum(n for name, n in sizes.items() if ".latent." in name)
    line = re.search(r"^  latent: .*$", printed, re.M)[0]
    numbers = [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) \(", line)]
    assert numbers == [sum(latent.values()), latent["encoder"], latent["readout"], latent["post_sampler"]]
    assert f"({100 * sum(latent.values()) / total:.2f}% of all)" in line
    embedding = sizes["embedding.word_embeddings.weight"]
    for stage, layers in enumerate(stage_layers):
        expected = sum(n for name, n in sizes.items() if any(name.startswith(f"decoder.layers.{i}.") for i in layers))
        if stage == 0:
            expected += embedding
        if stage == len(stage_layers) - 1:
            expected += sizes["decoder.final_layernorm.weight"] + (embedding if stage else 0)
        assert _count(printed, rf"^  pipeline stage {stage + 1}: ([\d,]+)") == expected, stage


LOG_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration +(\d+)/ +4 \| consumed samples: +(\d+) \| "
    r"learning rate: (\S+) \| grad norm: (\S+) \| global batch size: +4 \| ETA: (\d+):(\d\d):(\d\d) \| "
    r"mean of iterations (\d+)-(\d+): \| elapsed time per iteration \(ms\): (\S+) \| .*"
    r"\| lm loss: (\S+) \| kl: (\S+) \| .*number of skipped iterations: +0$",
    re.M,
)


@pytest.mark.slow
def test_pp2_run_prints_what_megatron_users_expect(ranks, tmp_path, single_rank_sizes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron_free.data.toy import parse_toy_sample
    from megatron_free.inference.toy_study import summarize_groups

    save, board = str(tmp_path / "ckpt"), str(tmp_path / "tb")
    first, printed = ranks(2, _printed_by_run, ["--pipeline-model-parallel-size", "2", *RUN_FLAGS], save, board)
    assert first == ""  # one rank prints, the last

    # The arguments, every one, as Megatron-LM prints them.
    table = printed[printed.index("---- arguments ----") : printed.index("---- end of arguments ----")]
    rows = re.findall(r"^  (\w+) \.+ (.*)$", table, re.M)
    names = [name for name, _ in rows]
    assert names == sorted(names, key=str.lower)
    assert dict(rows)["pipeline_model_parallel_size"] == "2" and dict(rows)["num_microbatches"] == "2"
    assert set(names) == set(
        vars(
            tiny_args(2, "--pipeline-model-parallel-size", "2", *RUN_FLAGS, "--save", save, "--tensorboard-dir", board)
        )
    )

    # The layout, the parameters, the data.
    assert "parallel layout: world size 2 = TP 1 x PP 2 x CP 1 x DP 1\n" in printed
    assert "batch: global batch 4 = micro batch 2 x DP 1 x 2 microbatches; 264 tokens" in printed
    assert "pipeline stage 1: decoder blocks 1-2, embedding\n" in printed
    assert (
        "pipeline stage 2: decoder blocks 3-4, latent (encoder, readout, post-sampler) before block 3, output layer\n"
    ) in printed
    _check_parameters(printed, single_rank_sizes, [(0, 1), (2, 3)])
    assert (
        "datasets: toy data (--toy-data): the paper's toy task, generated on the fly (no files); "
        "train 16 samples, valid 12 samples, 66 tokens each\n"
    ) in printed  # 3 evaluations x 4

    # Log lines: current learning rate and grad norm, losses averaged over the 2 iterations.
    events = EventAccumulator(glob.glob(f"{board}/events.*")[0], size_guidance={"tensors": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    lines = LOG_LINE.findall(printed)
    assert [int(line[0]) for line in lines] == [2, 4]
    for iteration, consumed, lr, grad_norm, hours, minutes, seconds, first_it, last_it, ms, lm_loss, kl in lines:
        it = int(iteration)
        assert int(consumed) == 4 * it and (int(first_it), int(last_it)) == (it - 1, it)
        assert float(lr) == pytest.approx(scalars["learning-rate"][it], rel=2e-6)
        assert float(grad_norm) == pytest.approx(scalars["grad-norm"][it], abs=1e-3)
        for name, printed_mean in (("lm loss", lm_loss), ("kl", kl)):
            mean = (scalars[name][it - 1] + scalars[name][it]) / 2
            assert float(printed_mean) == pytest.approx(mean, rel=1e-5), name
        eta = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        assert abs(eta - (4 - it) * float(ms) / 1000) <= 0.5
    assert scalars["learning-rate"][2] != scalars["learning-rate"][1]  # so "current" is not the mean
    assert "learning rate and grad norm are the current iteration's" in printed

    # The toy samples: marks, measures, and the same text in TensorBoard.
    assert "ok = a well-formed toy sequence" in printed
    groups = {}
    for name in ("shared Z", "independent Z"):
        block = printed[printed.index(f"--- {name} ---\n") :].splitlines()[1:4]
        assert all(re.match(r"^(ok |bad) K>[_!A-Z>]*$", line) for line in block), block
        groups[name] = [line[4:] for line in block]
        assert [line[:3] for line in block] == [
            "ok " if parse_toy_sample(text) is not None else "bad" for text in groups[name]
        ]
        m = summarize_groups([groups[name]])
        assert (
            f"well-formed {m['well_formed']:.2f} of 3 | same position "
            f"{m['position_agreement']:.2f} over {m['position_pairs']} pairs"
        ) in printed
    (text_event,) = events.Tensors("toy samples/text_summary")
    assert text_event.step == 4
    board_text = text_event.tensor_proto.string_val[0].decode()
    for name, texts in groups.items():
        assert f"    --- {name} ---" in board_text
        assert all(text in board_text for text in texts)
    assert "    measures (pairs:" in board_text

    # The summary.
    summary = printed[printed.index("---- end of training ----") :]
    assert "iterations: 4 in this run, now at 4 of 4" in summary
    assert "skipped iterations (non-finite loss or grad norm): 0" in summary
    assert re.search(r"wall time: 0:00:\d\d in the training loop", summary)
    assert re.search(r"tokens: 1,056 \([\d,]+ tokens/s", summary)
    validation = re.search(
        r"last validation \(iteration 4\): iwae lm loss: (\S+) \| kl: (\S+) \| "
        r"posterior lm loss: (\S+) \| prior lm loss: (\S+)$",
        summary,
        re.M,
    )
    for value, tag in zip(validation.groups(), ("iwae lm loss", "kl", "posterior lm loss", "prior lm loss")):
        assert float(value) == pytest.approx(scalars[f"validation/{tag}"][4], rel=1e-6)
    assert f"checkpoint: {save}/iter_0000004\n" in summary
    assert (tmp_path / "ckpt" / "iter_0000004" / "metadata.json").exists()


@pytest.mark.slow
def test_tp2_parameter_counts(ranks, single_rank_sizes):
    """Under TP2 the stage holds every parameter once; each GPU its shards and the replicated ones."""
    first, printed = ranks(2, _printed_by_setup, ["--tensor-model-parallel-size", "2"])
    assert first == ""
    _check_parameters(printed, single_rank_sizes, [range(4)])
    replicated = sum(
        n
        for name, n in single_rank_sizes.items()
        if name.endswith(("layernorm.weight", "zeta", "readout_norm.weight", "readout.weight"))
    )
    total = sum(single_rank_sizes.values())
    assert (
        f"pipeline stage 1: {total:,} ({(total - replicated) // 2 + replicated:,} on each of its 2 "
        f"tensor-parallel GPUs)"
    ) in printed


@pytest.mark.slow
def test_torchrun_prints_each_report_once(tmp_path):
    """Under torchrun (2 ranks, DP2) the arguments, which are printed before the process group
    exists, the rest of the start, the log lines and the summary come once each, from one rank."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "megatron_free.pretrain",
        *TINY_PRETRAIN_ARGV,
        "--train-iters",
        "2",
        "--save",
        str(tmp_path / "ckpt"),
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = result.stdout
    for once in (
        "------------------------ arguments ------------------------\n",
        "parallel layout: world size 2 = TP 1 x PP 1 x CP 1 x DP 2\n",
        "parameters: ",
        "datasets: toy data",
        "log lines every 1 iteration(s)",
        "------------------------ end of training ------------------------\n",
        f"  checkpoint: {tmp_path / 'ckpt' / 'iter_0000002'}\n",
    ):
        assert out.count(once) == 1, (once, out[-3000:])
    stamped = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration +\d/ +2 \| .* ETA: "
    assert len(re.findall(stamped, out, re.M)) == 2
