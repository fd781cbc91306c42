"""Which directory --load resolves to (or why not), whether its common state fits the run, and
the save-side renames, on plain directories: no process group, no model."""

from argparse import Namespace

import pytest

from megatron_free.training.checkpointing import (
    TRACKER,
    CheckpointError,
    _check_loadable,
    _remove_leftovers,
    _replace_dir,
    find_checkpoint,
)


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


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing", "no such directory"),
    (_file, "not a directory"),
    (_without_tracker, "has iter_0000001 but no " + TRACKER),
    (_tracker("latest\n"), f"{TRACKER} holds 'latest', not an iteration"),
    (_tracker("5"), "names iteration 5 but iter_0000005 is missing"),
    (_without_metadata, "no metadata.json in it"),
    (_killed_save, "no metadata.json in it"),
], ids=["missing", "file", "no-tracker", "bad-tracker", "tracker-without-dir", "no-metadata",
        "killed-save"])
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


def _run_args(**overrides):
    args = dict(hidden_size=32, latent_bits=6, finetune=False, no_load_optim=False)
    return Namespace(**{**args, **overrides})


def test_common_state_must_fit_the_run(tmp_path):
    """Other weight shapes fail; a checkpoint without optimizer state needs --no-load-optim or
    --finetune rather than resuming with a silently fresh optimizer."""
    saved = {"args": {"hidden_size": 32, "latent_bits": 6}, "opt_param_scheduler": {}}
    _check_loadable(tmp_path, saved, _run_args())
    with pytest.raises(CheckpointError, match="checkpoint has --latent-bits 6, this run 8$"):
        _check_loadable(tmp_path, saved, _run_args(latent_bits=8))
    without_optimizer = {"args": saved["args"]}
    with pytest.raises(CheckpointError, match="holds no optimizer state .* give --no-load-optim"):
        _check_loadable(tmp_path, without_optimizer, _run_args())
    _check_loadable(tmp_path, without_optimizer, _run_args(no_load_optim=True))
    _check_loadable(tmp_path, without_optimizer, _run_args(finetune=True))


@pytest.mark.parametrize("extra, message", [
    (("--keep-last-checkpoints", "2"), "--keep-last-checkpoints needs --save"),
    (("--save", "/tmp/x", "--keep-last-checkpoints", "0"), "--keep-last-checkpoints must be >= 1, got 0"),
])
def test_keep_last_checkpoints_is_validated(extra, message):
    from megatron_free.arguments import ArgumentError
    from tests.tiny import tiny_args

    with pytest.raises(ArgumentError, match=message):
        tiny_args(1, *extra)
