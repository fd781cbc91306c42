"""Checkpoints and fault tolerance through megatron_free.pretrain: bitwise resume, resharding of
weights and optimizer state, preemption (SIGTERM, --exit-interval, --exit-duration-in-mins),
kill -9 during a save, bad --load input, non-finite steps, no run over another's checkpoints
(a finished run's or a live one's), no process left after a kill -9 of the launcher."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from tests.tiny import TINY_PRETRAIN_ARGV, full_tensors, merge_ranks, tiny_args

REPO = Path(__file__).resolve().parents[2]
TRACKER = "latest_checkpointed_iteration.txt"
LOCK = "run.lock"


# ---------------------------------------------------------------- helpers run on every rank


def _train(extra, poisoned=()):
    """setup() + train() per tiny_args + extra on this rank. Returns ({iteration: metrics},
    {iteration: this rank's full weights after it}, final state, NonFiniteError message or None).
    Micro-batches of the iterations in ``poisoned`` get a NaN loss mask, so a NaN loss."""
    from megatron_free.pretrain import setup
    from megatron_free.run_config import loop_config
    from megatron_free.training.checkpointing import unwrap
    from megatron_free.training.loop import NonFiniteError, train
    from megatron_free.training.metrics import TrainingLogger

    args = tiny_args(dist.get_world_size(), *extra)
    chunks, optimizer, scheduler, state, train_iter, valid_iter, _ = setup(args)
    if poisoned:
        train_iter = _poison(train_iter, state.iteration, args.num_microbatches, poisoned)
    history, weights = {}, {}

    def record(state, metrics):
        history[state.iteration] = metrics
        weights[state.iteration] = full_tensors(unwrap(chunks[0]), use_grad=False)

    logger = TrainingLogger(None, args.log_interval, 1.0, dist.get_world_size(), None)
    error = None
    try:
        train(loop_config(args), chunks, optimizer, scheduler, train_iter, valid_iter, logger, state, record)
    except NonFiniteError as e:
        error = str(e)
    return history, weights, state, error


def _poison(batches, start_iteration, num_microbatches, poisoned):
    for index, batch in enumerate(batches):
        if start_iteration + index // num_microbatches + 1 in poisoned:
            batch = dict(batch, loss_mask=batch["loss_mask"] * float("nan"))
        yield batch


def _main(argv, poisoned=()):
    """megatron_free.pretrain.main(argv) in this rank's process; returns (exit code, stderr)."""
    code, stderr, _ = _main_with_stdout(argv, poisoned)
    return code, stderr


def _main_with_stdout(argv, poisoned=()):
    """megatron_free.pretrain.main(argv) in this rank's process; returns (exit code, stderr,
    stdout)."""
    import megatron_free.pretrain as pretrain

    if poisoned:
        real_setup = pretrain.setup

        def setup(args):
            *head, state, train_iter, valid_iter, tokenizer = real_setup(args)
            train_iter = _poison(train_iter, state.iteration, args.num_microbatches, poisoned)
            return (*head, state, train_iter, valid_iter, tokenizer)

        pretrain.setup = setup
    with _captured(1) as stdout, _captured(2) as stderr:
        code = pretrain.main([*TINY_PRETRAIN_ARGV, *argv])
    return code, stderr[0], stdout[0]


@contextlib.contextmanager
def _captured(fd: int):
    """What this process writes to file descriptor ``fd`` inside the block: the list's one
    string once the block is left."""
    text = []
    with tempfile.TemporaryFile("w+") as captured:
        sys.stdout.flush(), sys.stderr.flush()
        saved_fd = os.dup(fd)
        os.dup2(captured.fileno(), fd)
        try:
            yield text
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved_fd, fd)
            os.close(saved_fd)
            captured.seek(0)
            text.append(captured.read())


def _last(results):
    """The last rank's result: it holds the last pipeline stage, so every loss."""
    return results[-1]


def _weights(results, iteration):
    return merge_ranks([weights[iteration] for _, weights, _, _ in results])


def _tracker(path) -> int:
    return int((Path(path) / TRACKER).read_text())


# ---------------------------------------------------------------- 1. bitwise resume


@pytest.mark.slow
@pytest.mark.parametrize(
    "world,layout",
    [
        (1, []),
        (2, ["--use-distributed-optimizer"]),
    ],
    ids=["one-rank", "dp2-distopt"],
)
def test_resume_is_bitwise_identical(ranks, tmp_path, world, layout):
    """Stopped at iteration 3 (--exit-interval) and resumed, a run has the losses, KL, validation
    and weights of an uninterrupted run of 6 iterations, bit for bit."""
    run = [
        *layout,
        "--train-iters",
        "6",
        "--lr-decay-style",
        "cosine",
        "--lr-warmup-iters",
        "2",
        "--eval-interval",
        "3",
        "--eval-iters",
        "1",
    ]
    full = ranks(world, _train, run)
    first = ranks(world, _train, [*run, "--save", str(tmp_path), "--exit-interval", "3"])
    assert sorted(_last(first)[0]) == [1, 2, 3] and _tracker(tmp_path) == 3
    resumed = ranks(world, _train, [*run, "--load", str(tmp_path)])
    assert sorted(_last(resumed)[0]) == [4, 5, 6]

    expected, got = _last(full)[0], {**_last(first)[0], **_last(resumed)[0]}
    for iteration in range(1, 7):
        for name in (
            "lm loss",
            "kl",
            "kl loss",
            "grad norm",
            "validation/posterior lm loss",
            "validation/prior lm loss",
        ):
            if name.startswith("validation/") and iteration % 3:
                continue
            assert got[iteration][name] == expected[iteration][name], (iteration, name)
    full_weights, resumed_weights = _weights(full, 6), _weights(resumed, 6)
    for name, value in full_weights.items():
        assert torch.equal(resumed_weights[name], value), name


# ---------------------------------------------------------------- 2. resharding


@pytest.mark.slow
@pytest.mark.parametrize(
    "saved,loaded",
    [
        ((1, []), (2, ["--tensor-model-parallel-size", "2"])),
        ((2, ["--use-distributed-optimizer"]), (1, ["--use-distributed-optimizer"])),
        # The default padding: 256 rows under TP2, which TP1 keeps (it would pad to 128 from scratch).
        (
            (2, ["--tensor-model-parallel-size", "2", "--make-vocab-size-divisible-by", "128"]),
            (1, ["--make-vocab-size-divisible-by", "128"]),
        ),
    ],
    ids=["tp1-to-tp2", "dp2-distopt-to-dp1", "tp2-to-tp1-default-padding"],
)
def test_resume_under_another_layout(ranks, tmp_path, saved, loaded):
    """Weights, optimizer state and LR schedule saved at iteration 2 load under another layout,
    where iteration 3 gives the loss and weights of iteration 3 in the saved layout (the
    vocabulary's padding rows included: a resumed run keeps the checkpoint's)."""
    (saved_world, saved_layout), (loaded_world, loaded_layout) = saved, loaded
    schedule = ["--train-iters", "3", "--lr-decay-style", "cosine", "--lr-warmup-iters", "1"]
    reference = ranks(saved_world, _train, [*saved_layout, *schedule, "--save", str(tmp_path), "--save-interval", "2"])
    resumed = ranks(loaded_world, _train, [*loaded_layout, *schedule, "--load", str(tmp_path / "iter_0000002")])
    assert sorted(_last(resumed)[0]) == [3]
    assert_close(_last(resumed)[0][3]["lm loss"], _last(reference)[0][3]["lm loss"], rtol=1e-5, atol=0)
    expected, got = _weights(reference, 3), _weights(resumed, 3)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


# ---------------------------------------------------------------- 3. exits: SIGTERM, interval, duration

# A log line: "iteration 12/ 100 | ...", after a "[date time] " stamp where the log has one.
ITERATION_LINE = re.compile(r"^(?:\[[^]]*\] )?iteration\s+(\d+)\b", re.MULTILINE)


@pytest.mark.slow
def test_sigterm_finishes_the_iteration_saves_and_exits_zero(tmp_path):
    """torchrun, 2 ranks, --exit-signal-handler: SIGTERM to one worker stops both after the
    iteration in progress; that iteration is saved, the tracker names it, the job exits 0."""
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
        "--tensor-model-parallel-size",
        "2",
        "--train-iters",
        "100000",
        "--save",
        str(tmp_path),
        "--exit-signal-handler",
    ]
    job = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    lines, training = [], threading.Event()

    def read_output():
        for line in job.stdout:
            lines.append(line)
            if ITERATION_LINE.match(line):
                training.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        assert training.wait(timeout=300), "".join(lines)[-3000:]
        workers = [
            p
            for p in psutil.Process(job.pid).children(recursive=True)
            if "megatron_free.pretrain" in " ".join(p.cmdline())
        ]
        rank0 = next(p for p in workers if p.environ().get("RANK") == "0")
        rank0.send_signal(signal.SIGTERM)  # rank 1 gets no signal: it must stop with rank 0
        job.wait(timeout=240)
    finally:
        _kill_session(job)
        reader.join(timeout=10)
    output = "".join(lines)
    assert job.returncode == 0, output[-3000:]
    last = int(ITERATION_LINE.findall(output)[-1])
    assert last >= 1 and f"exiting at iteration {last}: received SIGTERM" in output
    assert _tracker(tmp_path) == last
    assert (tmp_path / f"iter_{last:07d}" / "metadata.json").exists()


def _kill_session(process: subprocess.Popen) -> None:
    """SIGKILL to what is left of the session ``process`` leads (it was started with
    start_new_session=True)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _train_counting_saves(extra):
    """_train, returning (the iterations save_checkpoint was called for, iterations run)."""
    from megatron_free.training import loop

    saved, save = [], loop.save_checkpoint

    def counting_save(root, iteration, *args):
        saved.append(iteration)
        return save(root, iteration, *args)

    loop.save_checkpoint = counting_save
    history, *_ = _train(extra)
    return saved, sorted(history)


def test_save_interval_and_final_save_into_a_new_directory(ranks, tmp_path):
    """--save names a directory that does not exist yet; --save-interval 2 and the end at
    --train-iters 4 save iterations 2 and 4, each once."""
    save = tmp_path / "not" / "yet"
    saved, iterations = ranks(1, _train_counting_saves, ["--save", str(save), "--save-interval", "2"])[0]
    assert saved == [2, 4] and iterations == [1, 2, 3, 4]
    assert _tracker(save) == 4
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000002", "iter_0000004", TRACKER, LOCK]


def test_keep_last_checkpoints_deletes_older_ones_and_resumes(ranks, tmp_path):
    """--keep-last-checkpoints 2 with a save every iteration keeps iterations 3 and 4 of a run
    stopped at 4 (a
    leftover of a killed deletion, iter_*.old, goes too); a resume to 6 keeps 5 and 6, and its
    weights equal an uninterrupted run's."""
    keep = ["--save", str(tmp_path), "--save-interval", "1", "--keep-last-checkpoints", "2"]
    (tmp_path / "iter_0000001.old").mkdir(parents=True)
    ranks(2, _train, [*keep, "--train-iters", "6", "--exit-interval", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000003", "iter_0000004", TRACKER, LOCK]
    resumed = ranks(2, _train, [*keep, "--load", str(tmp_path), "--train-iters", "6"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000005", "iter_0000006", TRACKER, LOCK]
    straight = ranks(2, _train, ["--train-iters", "6"])
    for (_, weights, *_), (_, reference, *_) in zip(resumed, straight):
        assert sorted(weights) == [5, 6]
        for name, tensor in reference[6].items():
            torch.testing.assert_close(weights[6][name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "flags,last",
    [
        (["--exit-interval", "2"], 2),
        (["--exit-duration-in-mins", "1e-6"], 1),  # counted from the process start: past it at once
    ],
    ids=["exit-interval", "exit-duration"],
)
def test_exit_flags_stop_both_ranks_and_save(ranks, tmp_path, flags, last):
    """--exit-interval / --exit-duration-in-mins stop both ranks after the same iteration,
    which is saved (once) and named by the tracker."""
    results = ranks(2, _train_counting_saves, ["--save", str(tmp_path), "--train-iters", "50", *flags])
    assert results[0] == results[1] == ([last], list(range(1, last + 1)))
    assert _tracker(tmp_path) == last


# ---------------------------------------------------------------- 4. kill -9 during a save

# Runs main() with dist_checkpointing.save replaced: save number argv[1] writes a torn
# checkpoint (each shard cut in half, no metadata.json) and then the process kills itself.
_DIE_DURING_SAVE = """
import os, signal, sys
from pathlib import Path
from megatron.core import dist_checkpointing
from megatron_free.pretrain import main

fatal_save, real_save, saves = int(sys.argv[1]), dist_checkpointing.save, []

def save_then_die(state, directory, *args, **kwargs):
    saves.append(directory)
    real_save(state, directory, *args, **kwargs)
    if len(saves) == fatal_save:
        for shard in Path(directory).glob("*.distcp"):
            os.truncate(shard, shard.stat().st_size // 2)
        (Path(directory) / "metadata.json").unlink()
        os.kill(os.getpid(), signal.SIGKILL)

dist_checkpointing.save = save_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_checkpoint(ranks, tmp_path):
    """A process killed (SIGKILL) in the middle of its second save leaves checkpoint 1 and the
    tracker intact; --load resumes from iteration 1, ignoring the torn iter_0000002.tmp, and the
    next save removes it."""
    save = tmp_path / "run"
    run = ["--train-iters", "2", "--save", str(save), "--save-interval", "1"]
    with open(tmp_path / "log", "w") as log:
        # A session of its own, killed whole afterwards should anything outlive the process
        # (test_kill_of_the_launcher_leaves_no_process checks that nothing does).
        killed = subprocess.Popen(
            [sys.executable, "-c", _DIE_DURING_SAVE, "2", *TINY_PRETRAIN_ARGV, *run],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            killed.wait(timeout=300)
        finally:
            _kill_session(killed)
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "log").read_text()[-3000:]
    assert _tracker(save) == 1
    assert (save / "iter_0000001" / "metadata.json").exists()
    assert (save / "iter_0000002.tmp").is_dir() and not (save / "iter_0000002").exists()

    history, *_ = _last(ranks(1, _train, [*run, "--load", str(save)]))
    assert sorted(history) == [2]
    assert _tracker(save) == 2
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000001", "iter_0000002", TRACKER, LOCK]


# ---------------------------------------------------------------- 5. bad --load input


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run directory holding the checkpoint of iteration 1 of the tiny model."""
    from tests.harness import run_ranks

    root = tmp_path_factory.mktemp("saved_run")
    run_ranks(1, _train, ["--train-iters", "1", "--save", str(root)])
    return root


def _copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _without_tracker(run, tmp_path):
    copy = _copy(run, tmp_path)
    (copy / TRACKER).unlink()
    return copy


def _truncated_shard(run, tmp_path):
    copy = _copy(run, tmp_path)
    shard = max((copy / "iter_0000001").glob("*.distcp"), key=lambda p: p.stat().st_size)
    os.truncate(shard, shard.stat().st_size // 2)
    return copy


def _without_metadata(run, tmp_path):
    copy = _copy(run, tmp_path)
    (copy / "iter_0000001" / "metadata.json").unlink()
    return copy


@pytest.mark.parametrize(
    "make_load_dir,extra,expected",
    [
        (lambda run, tmp: tmp / "nowhere", [], r"nowhere: no such directory$"),
        (_without_tracker, [], r"run: has iter_0000001 but no latest_checkpointed_iteration\.txt"),
        (_truncated_shard, [], r"iter_0000001: unreadable shard data, a truncated or damaged checkpoint"),
        (_without_metadata, [], r"iter_0000001: no metadata\.json in it"),
        (
            lambda run, tmp: run,
            ["--hidden-size", "64", "--ffn-hidden-size", "128"],
            r"checkpoint has --hidden-size 32, this run 64$",
        ),
        (lambda run, tmp: run, ["--latent-bits", "8"], r"checkpoint has --latent-bits 6, this run 8$"),
        (
            lambda run, tmp: run,
            ["--train-iters", "2"],
            r"LR schedule differs from the checkpoint's: total number of iterations 8, the checkpoint's 4 ",
        ),
    ],
    ids=["missing", "no-tracker", "truncated-shard", "no-metadata", "hidden-size", "latent-bits", "lr-schedule"],
)
def test_bad_load_is_one_error_line(ranks, saved_run, tmp_path, make_load_dir, extra, expected):
    """main() with a --load it cannot use exits 2 with one line, `error: --load <path>: <why>`,
    and no traceback; it never starts from scratch instead."""
    load = make_load_dir(saved_run, tmp_path)
    code, stderr = ranks(1, _main, ["--train-iters", "1", "--load", str(load), *extra])[0]
    assert code == 2, stderr
    assert re.match(r"error: --load \S+: ", _error_line(stderr)) and re.search(expected, _error_line(stderr))


def test_load_of_a_run_directory_without_checkpoint_starts_fresh(ranks, tmp_path):
    """--load and --save of a directory with no checkpoint yet (a requeued job's first start;
    only the .tmp of a killed first save) train from scratch with a warning and save there."""
    (tmp_path / "iter_0000001.tmp").mkdir()
    code, stderr = ranks(1, _main, ["--train-iters", "1", "--load", str(tmp_path), "--save", str(tmp_path)])[0]
    assert code == 0, stderr
    assert re.search(r"^warning: --load \S+: no checkpoint in it yet .* starting from scratch$", stderr, re.M)
    assert _tracker(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000001", TRACKER, LOCK]


def _error_line(stderr: str) -> str:
    """The one `error:` line, which must end stderr (warnings may come before it)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


# ---------------------------------------------------------------- 6. non-finite steps


def test_non_finite_steps_are_skipped_then_stop_the_run(ranks, tmp_path):
    """NaN losses at iterations 2, 4, 5, 6: each update is skipped (weights unchanged) and
    counted; the third in a row (--max-skipped-iterations 3) raises NonFiniteError, saving
    nothing more: the checkpoint of iteration 4 (--save-interval 2) stays the last."""
    history, weights, state, error = _last(
        ranks(
            1,
            _train,
            ["--train-iters", "8", "--max-skipped-iterations", "3", "--save", str(tmp_path), "--save-interval", "2"],
            (2, 4, 5, 6),
        )
    )
    assert sorted(history) == [1, 2, 3, 4, 5]  # iteration 6 raised
    assert [i for i in history if history[i]["skipped"]] == [2, 4, 5]
    assert all(history[i]["lm loss"] != history[i]["lm loss"] for i in (2, 4, 5))  # NaN
    for iteration in (2, 4, 5):
        for name, value in weights[iteration - 1].items():
            assert torch.equal(weights[iteration][name], value), (iteration, name)
    assert not torch.equal(
        weights[3]["embedding.word_embeddings.weight"], weights[2]["embedding.word_embeddings.weight"]
    )
    assert (state.iteration, state.skipped_in_a_row, state.skipped_total) == (6, 3, 4)
    assert error.startswith("3 iterations in a row (up to iteration 6) had a non-finite")
    assert _tracker(tmp_path) == 4 and not (tmp_path / "iter_0000006").exists()


def test_main_exits_3_after_too_many_non_finite_steps(ranks):
    """main() reports the stop after --max-skipped-iterations as one error line, exit code 3."""
    code, stderr = ranks(1, _main, ["--train-iters", "4", "--max-skipped-iterations", "2"], (1, 2, 3, 4))[0]
    assert code == 3, stderr
    assert "(--max-skipped-iterations 2)" in _error_line(stderr)


# ---------------------------------------------------------------- 7. one run per --save directory


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A --save directory of a run that reached --train-iters 2 (checkpoints 1 and 2)."""
    from tests.harness import run_ranks

    root = tmp_path_factory.mktemp("finished_run")
    run_ranks(1, _train, ["--train-iters", "2", "--save", str(root), "--save-interval", "1"])
    return root


def _snapshot(root: Path) -> dict:
    """Every file under ``root`` (run.lock aside: each run writes itself into it) with its inode
    and modification time: what a rewrite of any file would change."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.name != LOCK
    }


@pytest.mark.parametrize(
    "load,extra,why",
    [
        (None, [], "this run has no --load"),
        ("iter_0000001", [], r"this run loads \S+/iter_0000001, not \S+/iter_0000002"),
        ("", ["--finetune"], "--finetune starts this run at iteration 0"),
    ],
    ids=["no-load", "load-an-older-one", "finetune"],
)
def test_a_run_over_checkpoints_it_does_not_resume_is_refused(ranks, finished_run, tmp_path, load, extra, why):
    """A second run on a finished run's --save that would not resume from its last checkpoint
    exits 2 with one line naming --save, --load and how to start over; nothing there changes."""
    save = _copy(finished_run, tmp_path)
    before = _snapshot(save)
    argv = ["--train-iters", "4", "--save", str(save), *extra]
    if load is not None:
        argv += ["--load", str(save / load)]
    code, stderr = ranks(1, _main, argv)[0]
    assert code == 2, stderr
    assert re.fullmatch(
        rf"error: --save {re.escape(str(save))} already holds checkpoints up to iteration 2 and {why}: "
        rf"give --load {re.escape(str(save))} to resume from them, or another --save \(or delete "
        rf"{re.escape(str(save))}\) to start over",
        _error_line(stderr),
    ), stderr
    assert _snapshot(save) == before and _tracker(save) == 2


def test_a_finished_run_launched_again_says_so_and_writes_nothing(ranks, finished_run, tmp_path):
    """--load = --save (the examples' configs) of a run already at --train-iters: one line, exit
    0, no checkpoint rewritten."""
    save = _copy(finished_run, tmp_path)
    before = _snapshot(save)
    code, stderr, stdout = ranks(
        1, _main_with_stdout, ["--train-iters", "2", "--save", str(save), "--load", str(save)]
    )[0]
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert f"loaded {save / 'iter_0000002'} at iteration 2" in lines
    assert lines[-1] == f"nothing to train: --load {save} is already at iteration 2, --train-iters 2"
    assert _snapshot(save) == before and _tracker(save) == 2


def _launch(save, *extra) -> subprocess.Popen:
    """The tiny model under torchrun (2 ranks, TP2) in a session of its own, saving into ``save``
    every iteration until stopped; its output goes to ``save``.log."""
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
        "--tensor-model-parallel-size",
        "2",
        "--train-iters",
        "100000",
        "--save",
        str(save),
        "--save-interval",
        "1",
        *extra,
    ]
    with open(f"{save}.log", "w") as log:
        return subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )


def _wait_for(condition, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def _workers(job: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(job.pid).children()
    return [p for p in children if "megatron_free.pretrain" in " ".join(p.cmdline())]


def _alive_in_sessions(sessions: set[int]) -> list[str]:
    """The processes (not zombies) of the given sessions: torchrun starts each worker in its
    own, and the processes a worker starts stay in it."""
    alive = []
    for process in psutil.process_iter(["status", "cmdline"]):
        try:
            if os.getsid(process.pid) in sessions and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid}: {' '.join(process.info['cmdline'] or [])[:120]}")
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("kill_workers", [False, True], ids=["torchrun", "torchrun-and-workers"])
def test_kill_of_the_launcher_leaves_no_process(tmp_path, kill_workers):
    """kill -9 of torchrun alone (what the OOM killer does), or of torchrun and its workers:
    within a few seconds no process of the run is left (workers, dist_checkpointing's writers,
    its multiprocessing manager and resource tracker), and no checkpoint is written after."""
    save = tmp_path / "run"
    job = _launch(save)
    sessions = set()
    try:
        # Past the second save: the helper processes of the first one exist.
        _wait_for(lambda: (save / TRACKER).exists() and _tracker(save) >= 2, 300, "second save", Path(f"{save}.log"))
        workers = _workers(job)
        sessions = {os.getsid(p.pid) for p in workers}
        helpers = [p for w in workers for p in w.children(recursive=True)]
        assert len(workers) == 2 and os.getsid(job.pid) not in sessions, workers
        assert len(helpers) >= 4, helpers  # per worker: the manager and its resource tracker
        os.kill(job.pid, signal.SIGKILL)
        if kill_workers:
            for worker in workers:
                worker.kill()
        job.wait(timeout=10)
        _wait_for(lambda: not _alive_in_sessions(sessions), 10, "end of every process", Path(f"{save}.log"))
        last = _tracker(save)
        time.sleep(3)
        assert _tracker(save) == last and not (save / f"iter_{last + 1:07d}").exists()
    finally:
        _kill_session(job)
        for process in _alive_in_sessions(sessions):
            os.kill(int(process.split(":")[0]), signal.SIGKILL)


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_save_is_refused(ranks, tmp_path):
    """A job launched twice (or requeued while the old one lingers), --load = --save: the second
    exits 2 with one line naming the first run (its rank 0's pid), before touching anything;
    the first goes on saving, then stops on SIGTERM with a complete last checkpoint."""
    save = tmp_path / "run"
    job = _launch(save, "--exit-signal-handler")
    log = Path(f"{save}.log")
    try:
        _wait_for(lambda: (save / TRACKER).exists(), 300, "first save", log)
        rank0 = next(p for p in _workers(job) if p.environ().get("RANK") == "0")
        code, stderr = ranks(
            1, _main, ["--train-iters", "100000", "--save", str(save), "--load", str(save), "--exit-interval", "1"]
        )[0]
        assert code == 2, stderr
        assert re.fullmatch(
            rf"error: --save {re.escape(str(save))} is in use by another run \(pid {rank0.pid} on "
            rf"{re.escape(socket.gethostname())}, since \S+ \S+ UTC; run.lock\): wait for it to end "
            rf"or stop it, or give another --save",
            _error_line(stderr),
        ), stderr
        refused_at = _tracker(save)
        _wait_for(lambda: _tracker(save) > refused_at + 1, 120, "save after the refusal", log)
        rank0.send_signal(signal.SIGTERM)
        job.wait(timeout=240)
    finally:
        _kill_session(job)
    output = log.read_text()
    assert job.returncode == 0, output[-3000:]
    last = int(re.findall(r"exiting at iteration (\d+): received SIGTERM", output)[-1])
    assert _tracker(save) == last and (save / f"iter_{last:07d}" / "metadata.json").exists()
    assert not list(save.glob("*.tmp")), sorted(p.name for p in save.iterdir())
