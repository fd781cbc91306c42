"""What a run prints, without ranks: the Megatron-LM arguments table, the log line (which values
are current, which are means, the ETA), the end summary, the toy samples' marks and measures,
and the latent's parameter parts against the planner's counts."""

import argparse
import re

import pytest

from megatron_free.training.metrics import TrainingLogger
from megatron_free.training.run_report import format_arguments, format_summary

LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| "
    r"learning rate: (\S+) \| grad norm: (\S+) \| global batch size: +(\d+) \| ETA: (\d+):(\d\d):(\d\d) \| "
    r"mean of iterations (\d+)-(\d+): \| elapsed time per iteration \(ms\): (\S+) \| .* \| "
    r"lm loss: (\S+) \| kl: (\S+) \| number of skipped iterations: +(\d+)$"
)


def test_arguments_table_is_megatron_lms():
    """One line per argument, the name padded with dots to 48 characters, sorted; the framing
    lines of Megatron-LM's _print_args."""
    args = argparse.Namespace(train_iters=4, lr=0.01, Data_path=None, seq_length=66)
    lines = format_arguments(args).splitlines()
    assert lines[0] == "------------------------ arguments ------------------------"
    assert lines[-1] == "-------------------- end of arguments ---------------------"
    # Megatron-LM: '  {} {} {}'.format(arg, '.' * (48 - len(arg)), value), sorted by lower case
    assert lines[1:-1] == [
        f"  {name} {'.' * (48 - len(name))} {value}"
        for name, value in (("Data_path", None), ("lr", 0.01), ("seq_length", 66), ("train_iters", 4))
    ]
    assert {line.index(" ", 40) for line in lines[1:-1]} == {51}  # the values line up


def test_log_line_current_values_means_and_eta(capsys, monkeypatch):
    """Every 2nd iteration a line: learning rate and grad norm of that iteration, the losses
    averaged over the two, skipped iterations counted over them, and ETA = remaining iterations x
    the mean iteration time of the window."""
    # perf_counter: the first window from 100 s to 102 s, the second from 102 s to 106 s.
    clock = iter([100.0, 102.0, 102.0, 106.0, 106.0])
    monkeypatch.setattr("megatron_free.training.metrics.time.perf_counter", lambda: next(clock))
    logger = TrainingLogger(None, 2, 1e12, 1, None, train_iters=10)
    logger.iteration(1, 4, 264, {"lm loss": 3.0, "kl": 0.5}, 0.01, 4.0, None, 4, False, 1.0)
    assert capsys.readouterr().out == ""
    logger.iteration(2, 8, 264, {"lm loss": 2.0, "kl": 0.25}, 0.02, 2.5, None, 4, True, 1.0)
    explanation, line = capsys.readouterr().out.splitlines()
    assert "learning rate and grad norm are the current iteration's" in explanation
    assert "means over those iterations" in explanation
    m = LINE.match(line)
    assert m, line
    assert (m[2], m[3], m[4]) == ("2", "10", "8")
    assert float(m[5]) == 0.02 and float(m[6]) == 2.5  # current, not means
    assert (m[11], m[12]) == ("1", "2")
    assert float(m[13]) == 1000.0  # (102 - 100) s / 2 iterations
    assert int(m[8]) * 3600 + int(m[9]) * 60 + int(m[10]) == 8  # 8 iterations left x 1 s
    assert float(m[14]) == 2.5 and float(m[15]) == 0.375  # means of the two
    assert m[16] == "1"
    # The next window counts afresh.
    logger.iteration(3, 12, 264, {"lm loss": 1.0, "kl": 0.0}, 0.03, 1.0, None, 4, False, 1.0)
    logger.iteration(4, 16, 264, {"lm loss": 1.0, "kl": 0.0}, 0.04, 1.0, None, 4, False, 1.0)
    m = LINE.match(capsys.readouterr().out.strip())
    assert (m[11], m[12], m[16]) == ("3", "4", "0") and float(m[14]) == 1.0
    assert int(m[8]) * 3600 + int(m[9]) * 60 + int(m[10]) == 12  # 6 left x (106 - 102) / 2 s


def test_summary():
    text = format_summary(
        start_iteration=2,
        iteration=6,
        train_iters=10,
        seconds=8.0,
        tokens_per_iteration=264,
        skipped=1,
        validation=(6, {"kl": 0.25, "prior lm loss": 1.5}),
        saved="/runs/a/checkpoints/iter_0000006",
    )
    assert "iterations: 4 in this run (resumed at 2), now at 6 of 10" in text
    assert "wall time: 0:00:08 in the training loop (2000.0 ms per iteration" in text
    assert "tokens: 1,056 (132 tokens/s" in text
    assert "skipped iterations (non-finite loss or grad norm): 1" in text
    assert "last validation (iteration 6): kl: 2.500000E-01 | prior lm loss: 1.500000E+00" in text
    assert "checkpoint: /runs/a/checkpoints/iter_0000006" in text
    bare = format_summary(
        start_iteration=0,
        iteration=1,
        train_iters=1,
        seconds=1.0,
        tokens_per_iteration=1,
        skipped=0,
        validation=None,
        saved=None,
    )
    assert "last validation: none" in bare and "checkpoint: none saved" in bare


def test_toy_samples_report_marks_and_measures():
    """ok/bad follow parse_toy_sample; the measures are summarize_groups' of each group."""
    from megatron_free.inference.toy_study import summarize_groups, toy_samples_report

    def text(position, noise=()):
        body = ["_"] * 64
        body[position : position + 8] = "K" * 8
        for i in noise:
            body[i] = "!"
        return "K>" + "".join(body)

    groups = {"shared Z": [text(5), text(5, (30,)), "K>" + "_" * 64], "independent Z": [text(1), text(40, (1,))]}
    lines = toy_samples_report(groups)
    assert "ok = a well-formed toy sequence" in lines[0] and "bad = any other text" in lines[0]
    assert lines[1:5] == ["--- shared Z ---", f"ok  {text(5)}", f"ok  {text(5, (30,))}", "bad K>" + "_" * 64]
    assert lines[5:8] == ["--- independent Z ---", f"ok  {text(1)}", f"ok  {text(40, (1,))}"]
    shared, independent = lines[-2], lines[-1]
    m = summarize_groups([groups["shared Z"]])
    assert m["well_formed"] == pytest.approx(2 / 3) and m["position_agreement"] == 1.0
    assert shared.startswith("  shared Z:")
    assert "well-formed 0.67 of 3 | same position 1.00 over 1 pairs" in shared
    assert (
        f"noise identical {m['noise_identical']:.2f}, noise Jaccard {m['noise_jaccard']:.2f} over 3 pairs"
    ) in shared
    assert "well-formed 1.00 of 2 | same position 0.00 over 1 pairs" in independent


def test_latent_parts_add_up_to_the_planners_latent():
    """encoder + readout + post-sampler is the latent path parameter_counts and the planner use."""
    from megatron_free.training.flops import (
        ModelShape,
        latent_parameter_parts,
        latent_parameters,
        parameter_counts,
    )

    shape = ModelShape(4, 32, 64, 4, 2, 64, 66, True, False, 6)
    parts = latent_parameter_parts(shape)
    counts = parameter_counts(shape)
    assert parts["readout"] == 32 + 32 * 6 and parts["post_sampler"] == 64 * 32
    assert parts["encoder"] + parts["readout"] == counts["encoder"]
    assert sum(parts.values()) == sum(latent_parameters(shape).values())
    baseline = ModelShape(4, 32, 64, 4, 2, 64, 66, True, True, 6)
    assert set(latent_parameter_parts(baseline).values()) == {0}


def _write_indexed(prefix, documents):
    """An indexed dataset of megatron-core's format: one sequence per document."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin")
    for document in documents:
        builder.add_item(torch.tensor(document))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")


def test_dataset_lines(tmp_path):
    """Toy and mock data say so; indexed data lists the blend's prefixes with their weights,
    documents and tokens."""
    from megatron_free.training.run_report import dataset_report

    def args(**kw):
        base = dict(toy_data=False, mock_data=False, data_path=None, split="969,30,1", seq_length=66, eval_interval=2)
        return argparse.Namespace(**{**base, **kw})

    train, valid = range(16), range(12)
    assert dataset_report(args(toy_data=True), train, valid) == (
        "datasets: toy data (--toy-data): the paper's toy task, generated on the fly (no files); "
        "train 16 samples, valid 12 samples, 66 tokens each"
    )
    assert dataset_report(args(mock_data=True, eval_interval=None), train, valid).endswith(
        "synthetic documents (no files); train 16 samples, no validation, 66 tokens each"
    )
    _write_indexed(tmp_path / "a", [[1, 2, 3], [4, 5]])
    _write_indexed(tmp_path / "b", [[7] * 10])
    lines = dataset_report(
        args(data_path=["0.3", str(tmp_path / "a"), "0.7", str(tmp_path / "b")]), train, valid
    ).splitlines()
    assert lines == [
        "datasets: --data-path, 2 indexed dataset(s), --split 969,30,1; train 16 samples, "
        "valid 12 samples, 66 tokens each",
        f"  {tmp_path / 'a'}: weight 0.3, 2 documents, 5 tokens",
        f"  {tmp_path / 'b'}: weight 0.7, 1 documents, 10 tokens",
    ]
