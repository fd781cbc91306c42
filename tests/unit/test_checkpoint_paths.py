"""Which directory --load resolves to (or why not), whether its common state fits the run, the
save-side renames, and the guards of a --save directory (its lock, checkpoints a run does not
resume from), on plain directories: no process group, no model."""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_free.training.checkpointing import (
    LOCK,
    TRACKER,
    CheckpointError,
    LoadConfig,
    _check_loadable,
    _checkpoints_not_resumed,
    _claims,
    _lock_for_this_run,
    _remove_leftovers,
    _remove_older_checkpoints,
    _replace_dir,
    _saved_checkpoints,
    find_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


def _checkpoint(path):
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    return path


def test_tracker_names_the_checkpoint(tmp_path):
    """The tracker picks its iteration, not the newest directory; .tmp leftovers are ignored."""
    _checkpoint(tmp_path / "iter_0000002")
    _checkpoint(tmp_path / "iter_0000004")
    (tmp_path / "iter_0000006.tmp").mkdir()
    (tmp_path / TRACKER).write_text("2\n")
    assert find_checkpoint(tmp_path) == tmp_path / "iter_0000002"


def test_an_iteration_directory_loads_as_given(tmp_path):
    """--load may name iter_XXXXXXX itself, whatever the tracker says."""
    assert find_checkpoint(_checkpoint(tmp_path / "iter_0000003")) == tmp_path / "iter_0000003"


def test_no_checkpoint_yet(tmp_path):
    """An empty run directory, or one holding only a killed save's .tmp, has no checkpoint: None."""
    assert find_checkpoint(tmp_path) is None
    (tmp_path / "iter_0000001.tmp").mkdir()
    assert find_checkpoint(tmp_path) is None


def _file(d):
    (d / "file").write_text("")
    return d / "file"


def _without_tracker(d):
    _checkpoint(d / "iter_0000001")
    return d


def _tracker(text):
    def make(d):
        (d / TRACKER).write_text(text)
        return d

    return make


def _without_metadata(d):
    (d / "iter_0000005").mkdir()
    return d / "iter_0000005"


def _killed_save(d):
    (d / "iter_0000005.tmp").mkdir()
    return d / "iter_0000005.tmp"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing", "no such directory"),
        (_file, "not a directory"),
        (_without_tracker, "has iter_0000001 but no " + TRACKER),
        (_tracker("latest\n"), f"{TRACKER} holds 'latest', not an iteration"),
        (_tracker("5"), "names iteration 5 but iter_0000005 is missing"),
        (_without_metadata, "no metadata.json in it"),
        (_killed_save, "no metadata.json in it"),
    ],
    ids=["missing", "file", "no-tracker", "bad-tracker", "tracker-without-dir", "no-metadata", "killed-save"],
)
def test_unusable_load_directory(tmp_path, make, message):
    """Each unusable --load names the path and the problem in one line."""
    with pytest.raises(CheckpointError, match="^--load .*" + message.replace(".", r"\.")) as error:
        find_checkpoint(make(tmp_path))
    assert "\n" not in str(error.value)


def test_saving_an_existing_iteration_again(tmp_path):
    """A save of an iteration already on disk replaces it; the leftovers of killed saves go."""
    old = _checkpoint(tmp_path / "iter_0000002")
    (old / "stale").write_text("")
    new = _checkpoint(tmp_path / "iter_0000002.tmp")
    (tmp_path / "iter_0000001.tmp").mkdir()
    (tmp_path / "iter_0000001.old").mkdir()
    (tmp_path / (TRACKER + ".tmp-123")).write_text("1")
    _replace_dir(new, old)
    assert (old / "metadata.json").exists() and not (old / "stale").exists()
    _remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002"]


def _load(**overrides):
    return LoadConfig(path="unused", **overrides)


def _description(**overrides):
    from megatron_free.model.description import ModelDescription

    fields = dict(
        num_layers=4,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=None,
        max_position_embeddings=66,
        rotary_base=10000,
        norm_epsilon=1e-5,
        tie_embeddings=True,
        vocab_size=30,
        padded_vocab_size=32,
        tokenizer_type="CharacterTokenizer",
        tokenizer_model=None,
        baseline=False,
        latent_bits=6,
        free_bits=0.25,
        injection_layer=3,
    )
    return ModelDescription(**{**fields, **overrides})


def test_common_state_must_fit_the_run(tmp_path):
    """Other weight shapes fail (kappa may change); a checkpoint without optimizer state needs
    --no-load-optim or --finetune rather than resuming with a silently fresh optimizer."""
    saved = {"model_description": _description().to_state(), "opt_param_scheduler": {}}
    _check_loadable(tmp_path, saved, _description(free_bits=1.0), _load())
    with pytest.raises(CheckpointError, match="checkpoint has --latent-bits 6, this run 8$"):
        _check_loadable(tmp_path, saved, _description(latent_bits=8), _load())
    without_optimizer = {"model_description": saved["model_description"]}
    with pytest.raises(CheckpointError, match="holds no optimizer state .* give --no-load-optim"):
        _check_loadable(tmp_path, without_optimizer, _description(), _load())
    _check_loadable(tmp_path, without_optimizer, _description(), _load(with_optimizer=False))
    _check_loadable(tmp_path, without_optimizer, _description(), _load(finetune=True))


def test_checkpoints_before_the_description_still_describe_their_model(tmp_path):
    """An older checkpoint's run flags (vars(args)) give its description; neither: one line."""
    from megatron_free.model.description import ModelDescription

    flags = dict(
        num_layers=4,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=None,
        max_position_embeddings=66,
        rotary_base=10000,
        norm_epsilon=1e-5,
        untie_embeddings_and_output_weights=False,
        padded_vocab_size=32,
        toy_data=True,
        tokenizer_type=None,
        tokenizer_model=None,
        baseline=False,
        latent_bits=6,
        free_bits=0.25,
        injection_layer=3,
        vocab_size=None,
    )
    legacy = {"args": flags, "opt_param_scheduler": {}}
    assert ModelDescription.from_checkpoint_state(legacy).shape_differences(_description()) == []
    assert ModelDescription.from_checkpoint_state(legacy).tokenizer_type == "CharacterTokenizer"
    _check_loadable(tmp_path, legacy, _description(), _load())
    with pytest.raises(CheckpointError, match="holds neither a model description nor run arguments"):
        _check_loadable(tmp_path, {"opt_param_scheduler": {}}, _description(), _load())


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--keep-last-checkpoints", "2"), "--keep-last-checkpoints needs --save"),
        (("--save", "/tmp/x", "--keep-last-checkpoints", "0"), "--keep-last-checkpoints must be >= 1, got 0"),
    ],
)
def test_keep_last_checkpoints_is_validated(extra, message):
    from megatron_free.arguments import ArgumentError
    from tests.tiny import tiny_args

    with pytest.raises(ArgumentError, match=message):
        tiny_args(1, *extra)


# ---------------------------------------------------------------- the guards of a --save directory


def _run_dir(d, tracker=None, *iterations):
    for iteration in iterations:
        _checkpoint(d / f"iter_{iteration:07d}")
    if tracker is not None:
        (d / TRACKER).write_text(f"{tracker}\n")
    return d


def test_the_lock_file_is_no_checkpoint(tmp_path):
    """run.lock is neither found as a checkpoint nor counted, nor deleted by retention."""
    (tmp_path / LOCK).write_text("pid 1 on host, since then\n")
    assert find_checkpoint(tmp_path) is None
    _run_dir(tmp_path, 3, 1, 2, 3)
    assert find_checkpoint(tmp_path) == tmp_path / "iter_0000003"
    assert [p.name for p in _saved_checkpoints(tmp_path)] == [f"iter_000000{i}" for i in (1, 2, 3)]
    _remove_older_checkpoints(tmp_path, 3, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000003", TRACKER, LOCK]


@pytest.mark.parametrize(
    "make,load,finetune,problem",
    [
        (lambda d: None, None, False, None),
        (lambda d: (d / LOCK).write_text(""), None, False, None),
        (lambda d: _run_dir(d, 4, 2, 4), "", False, None),
        (lambda d: _run_dir(d, 4, 2, 4), "iter_0000004", False, None),
        (lambda d: _run_dir(d, 4, 2, 4), "./", False, None),
        (lambda d: _run_dir(d, None, 2, 4), "iter_0000004", False, None),
        (lambda d: _run_dir(d, 4, 2, 4), None, False, "up to iteration 4 and this run has no --load"),
        (
            lambda d: _run_dir(d, 4, 2, 4),
            "iter_0000002",
            False,
            "and this run loads .*/iter_0000002, not .*/iter_0000004",
        ),
        (lambda d: _run_dir(d, 4, 2, 4), "", True, "and --finetune starts this run at iteration 0"),
        (lambda d: _run_dir(d, None, 2, 4), None, False, f"up to iter_0000004 \\(no {TRACKER}\\) and this run has no"),
    ],
    ids=[
        "empty",
        "lock-only",
        "resume",
        "resume-the-iteration",
        "resume-other-spelling",
        "resume-without-tracker",
        "no-load",
        "load-older",
        "finetune",
        "no-tracker-no-load",
    ],
)
def test_checkpoints_a_run_does_not_resume_from(tmp_path, make, load, finetune, problem):
    """A --save directory may hold checkpoints only if this run resumes from the latest one."""
    save = tmp_path / "run"
    save.mkdir()
    make(save)
    load = None if load is None else f"{save}/{load}" if load else str(save)
    found = _checkpoints_not_resumed(save, load, finetune)
    if problem is None:
        assert found is None
    else:
        assert re.search(problem, found) and found.endswith(
            f"give --load {save} to resume from them, or another --save (or delete {save}) to start over"
        )


def test_a_save_never_replaces_a_newer_or_anothers_checkpoint(tmp_path):
    """Before each save the tracker must be the one this run last saw or wrote, and older than
    the iteration it saves."""
    claim = _lock_for_this_run(_run_dir(tmp_path, 4, 4))
    try:
        claim.check_before_saving(5)
        with pytest.raises(CheckpointError, match=f"{TRACKER} names iteration 4; not saving iteration 4 "):
            claim.check_before_saving(4)
        (tmp_path / TRACKER).write_text("9\n")
        with pytest.raises(CheckpointError, match=r"9 \(written by another run\); not saving iteration 5"):
            claim.check_before_saving(5)
    finally:
        _claims.pop(tmp_path.resolve()).release()


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from megatron_free.training.checkpointing import _lock_for_this_run
_lock_for_this_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(300)
"""


def test_the_lock_names_its_live_holder_and_dies_with_it(tmp_path):
    """A second claim of a --save directory fails with one line naming the live holder (pid,
    host); once the holder is killed (kill -9), the directory is free."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(CheckpointError) as refused:
            _lock_for_this_run(tmp_path)
        assert re.fullmatch(
            rf"--save {re.escape(str(tmp_path))} is in use by another run \(pid {holder.pid} on "
            rf"{re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC; {LOCK}\): "
            rf"wait for it to end or stop it, or give another --save",
            str(refused.value),
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _lock_for_this_run(tmp_path)
    try:
        assert (tmp_path / LOCK).read_text().startswith(f"pid {os.getpid()} on ")
    finally:
        _claims.pop(tmp_path.resolve()).release()


@pytest.mark.parametrize("config", ["toy_free_transformer.yaml", "shakespeare.yaml"])
def test_the_examples_resume_from_their_save_directory(config):
    """The main jobs' configs load what they save (as Megatron-LM's launch scripts do), so a
    second run resumes instead of starting over."""
    values = yaml.safe_load((REPO / "examples" / config).read_text())
    assert values["load"] == values["save"]
