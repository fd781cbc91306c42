"""Sharded checkpoints through megatron-core dist_checkpointing, in Megatron-LM's layout:

    <save>/iter_0000100/                      one checkpoint (torch_dist format)
    <save>/latest_checkpointed_iteration.txt  the tracker: the last complete iteration
    <save>/run.lock                           held by the run saving here: pid, host, since when

A checkpoint is written into ``iter_XXXXXXX.tmp`` and renamed only after every rank finished;
the tracker is then replaced atomically. A crash (or kill -9) during a save leaves the previous
checkpoint and the tracker untouched, and never a directory that looks complete; loading reads
the tracker, so leftover ``.tmp`` directories are ignored, and the next save removes them.
--keep-last-checkpoints N then deletes all but the N newest checkpoints.

One run at a time writes into a --save directory, and never over checkpoints it did not resume
from. Rank 0 holds an flock on run.lock from before its first save (and before removing any
leftover) to its end; the kernel drops the lock of a process that dies, so a killed run cannot
hold it. A second run on the directory is refused with one line naming the first. A run whose
--save holds checkpoints that it does not resume from (no --load, --load elsewhere, or
--finetune) is refused too, before any work: resume with --load of the same directory (as
Megatron-LM's launch scripts do, and the examples' configs), or give another --save, or delete
the directory to start over. Each save checks again that the tracker is still the one this run
last saw (or wrote), so no save ever replaces another run's newer checkpoint.

Held: the model, the optimizer, the LR scheduler, iteration, consumed samples, the RNG states
(python, numpy, torch, megatron's tracker; per rank), the model's description (model/description.py),
the parallel layout and the weights' dtype. The optimizer
reshards: megatron's distributed optimizer is saved in the 'fully_reshardable' format (each
parameter's state gathered whole on save, sliced on load), which loads under any other TP, PP
or DP size; its 'dp_reshardable' format would only reshard across DP. The plain optimizer's
state is sharded like the weights and reshards across TP and PP. The RNG states are restored
when the layout is the same (they are per rank).

--load of a run directory with no tracker and no iter_* directory (e.g. a requeued job's
first start with --load and --save the same; --save is created before the load) starts from
scratch with a warning, as Megatron-LM does. Anything else --load cannot use (a missing
directory, iter_* directories without a tracker, a damaged checkpoint, other model shapes)
raises CheckpointError: one line naming the path and the problem.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import random
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.managers import SyncManager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException

from megatron_free.model.description import SHAPE_FLAGS, DescriptionError, ModelDescription

# Checkpoint keys carry no wrapper prefixes: a checkpoint loads whatever wrappers (precision, DP) the next run uses.
from megatron_free.model.model import unwrap
from megatron_free.parallel.distributed import exit_with_parent
from megatron_free.training.metrics import is_logging_rank, print_rank_last

TRACKER = "latest_checkpointed_iteration.txt"
LOCK = "run.lock"
_ITERATION_DIR = re.compile(r"iter_\d{7}")
OPTIMIZER_SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the path and the mismatch."""


@dataclass(frozen=True)
class SaveConfig:
    """--save and how: every --save-interval iterations (and at exits and the end), with or without
    the optimizer (--no-save-optim) and the RNG states (--no-save-rng), the newest --keep-last-checkpoints kept."""

    root: str
    interval: int | None = None
    with_optimizer: bool = True
    with_rng: bool = True
    keep_last: int | None = None
    layout: tuple[int, int, int] = (1, 1, 1)  # this run's (TP, PP, DP): the RNG states are per rank


@dataclass(frozen=True)
class LoadConfig:
    """--load and what to restore: --finetune takes the weights only (from iteration 0); --no-load-optim,
    --no-load-rng; the LR schedule's --override-opt_param-scheduler / --use-checkpoint-opt_param-scheduler."""

    path: str
    finetune: bool = False
    with_optimizer: bool = True
    with_rng: bool = True
    override_scheduler: bool = False
    use_checkpoint_scheduler: bool = False
    layout: tuple[int, int, int] = (1, 1, 1)  # this run's (TP, PP, DP): RNG states restore only under the saved one


def checkpoint_dir(root: str, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_tracker(root, flag: str = "--load") -> int | None:
    """The last complete iteration under ``root``, or None when there is no tracker."""
    path = Path(root) / TRACKER
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{flag} {root}: {TRACKER} holds {text!r}, not an iteration number")
    return int(text)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Makes the renames inside ``path`` durable: after a power loss the tracker must not name a
    checkpoint whose rename from .tmp was lost."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rank_rng_state(include: bool) -> dict:
    if not include:
        return {}
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    layout = (
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_data_parallel_world_size(),
    )
    position = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    return {"rng_state": ShardedObject("rng_state", rng, layout, position, replica_id=0)}


def _allocate_adam_state(optimizer) -> None:
    """Gives a fresh distributed optimizer on torch's Adam the state Adam creates at its first
    step (zeros, step 0), so Adam's first step is unchanged. Without Apex or Transformer Engine
    (the CPU runtime) megatron's DistributedOptimizer.state_dict() reads 'step' from that state,
    and fails when saving or loading before any optimizer step."""
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(inner, distrib_optimizer.DistributedOptimizer) or len(inner.optimizer.state):
            continue
        for group in inner.optimizer.param_groups:
            for param in group["params"]:
                inner.optimizer.state[param] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(param),
                    "exp_avg_sq": torch.zeros_like(param),
                }


def _load_optimizer(optimizer, state) -> None:
    """optimizer.load_state_dict(state), working around megatron-core 0.16 on torch's Adam (no
    Apex or Transformer Engine): loading the 'fully_reshardable' distributed optimizer state
    copies every key of Adam's per-parameter state into place, 'step' included, which the
    checkpoint keeps in the param groups instead; so the parameter state goes in with 'step'
    set aside. 'step' comes back as one tensor per parameter: megatron sets a single tensor for
    all, which Adam's foreach step would then increment once per parameter."""
    from megatron.core.optimizer import distrib_optimizer

    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    if distrib_optimizer.HAVE_APEX_OR_TE or not any(
        isinstance(inner, distrib_optimizer.DistributedOptimizer) for inner in chained
    ):
        optimizer.load_state_dict(state)
        return
    states = [state] if len(chained) == 1 else [value for _, value in sorted(state.items())]
    for inner, inner_state in zip(chained, states):
        if not isinstance(inner, distrib_optimizer.DistributedOptimizer):
            inner.load_state_dict(inner_state)
            continue
        param_state = inner_state.pop("param_state")
        inner.load_state_dict(inner_state)  # param groups and 'step'; no param_state: no tensors yet
        steps = {param: adam.pop("step") for param, adam in inner.optimizer.state.items()}
        try:
            inner.load_parameter_state_from_fully_reshardable(param_state)
        finally:
            for param, step in steps.items():
                inner.optimizer.state[param]["step"] = step.clone()
    if len(chained) > 1:
        optimizer._synchronize_steps()


def _sharded_state(model_chunks, optimizer, scheduler, *, with_optimizer, with_rng, is_loading):
    model = unwrap(model_chunks[0])
    model_state = model.sharded_state_dict()
    state = {"model": model_state}
    if with_optimizer and optimizer is not None:
        _allocate_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata=OPTIMIZER_SHARDING
        )
        state["opt_param_scheduler"] = scheduler.state_dict()
    state.update(_rank_rng_state(with_rng))
    return state


def save_checkpoint(config: SaveConfig, iteration, model_chunks, optimizer, scheduler, consumed_samples):
    """Writes <root>/iter_XXXXXXX and then the tracker. Collective: every rank calls it."""
    root = config.root
    final = checkpoint_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    error = None
    if dist.get_rank() == 0:
        try:
            claim = _claims.get(Path(root).resolve()) or _lock_for_this_run(Path(root))
            claim.check_before_saving(iteration)
        except CheckpointError as e:
            error = str(e)
        else:
            _remove_leftovers(Path(root))
            tmp.mkdir()
    _raise_on_every_rank(error)
    _writer_results_queue_dies_with_this_process()
    state = _sharded_state(
        model_chunks,
        optimizer,
        scheduler,
        with_optimizer=config.with_optimizer,
        with_rng=config.with_rng,
        is_loading=False,
    )
    state.update(
        iteration=iteration,
        consumed_samples=consumed_samples,
        layout=list(config.layout),
        weights_dtype=str(unwrap(model_chunks[0]).config.params_dtype).removeprefix("torch."),
        checkpoint_version=1,
        rng_saved=config.with_rng,
    )
    description = unwrap(model_chunks[0]).description
    if description is not None:
        state["model_description"] = description.to_state()
    dist_checkpointing.save(state, str(tmp))
    dist.barrier()  # every rank's shards are written
    if dist.get_rank() == 0:
        _replace_dir(tmp, final)
        _fsync_dir(Path(root))
        _write_atomically(Path(root) / TRACKER, f"{iteration}\n")
        claim.tracker = iteration
        if config.keep_last:
            _remove_older_checkpoints(Path(root), iteration, config.keep_last)
    dist.barrier()
    return final


@dataclass
class _Claim:
    """Rank 0's hold on a --save directory: the locked run.lock and the tracker's iteration this
    run last saw or wrote there (None: no tracker)."""

    root: Path
    lock_fd: int
    tracker: int | None

    def check_before_saving(self, iteration: int) -> None:
        current = read_tracker(self.root, "--save")
        if current is None:
            return
        if current != self.tracker or iteration <= current:
            whose = " (written by another run)" if current != self.tracker else ""
            raise CheckpointError(
                f"--save {self.root}: {TRACKER} names iteration {current}{whose}; not saving "
                f"iteration {iteration} over it: give another --save"
            )

    def release(self) -> None:
        os.close(self.lock_fd)


_claims: dict[Path, _Claim] = {}  # rank 0's, by resolved --save path


def claim_save_dir(save, load, finetune: bool) -> None:
    """Before --load and any save, collective: rank 0 locks --save for this run (held to the
    end of the process) and refuses a --save that holds checkpoints this run does not resume
    from. Raises CheckpointError on every rank."""
    error = None
    if dist.get_rank() == 0:
        root = Path(save)
        previous = _claims.pop(root.resolve(), None)
        if previous is not None:  # an earlier run in this process
            previous.release()
        try:
            _lock_for_this_run(root)
            error = _checkpoints_not_resumed(root, load, finetune)
        except CheckpointError as e:
            error = str(e)
        if error is not None and root.resolve() in _claims:
            _claims.pop(root.resolve()).release()
    _raise_on_every_rank(error)


def _raise_on_every_rank(error: str | None) -> None:
    """Rank 0's error (or None) raised as CheckpointError on every rank."""
    message = [error]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise CheckpointError(message[0])


def _lock_for_this_run(root: Path) -> _Claim:
    """Takes the flock of <root>/run.lock and writes this run into it; CheckpointError naming
    the holder when another live run has it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CheckpointError(f"--save {root}: cannot create {LOCK} ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "it has not written who it is yet"
        os.close(fd)
        raise CheckpointError(
            f"--save {root} is in use by another run ({holder}; {LOCK}): wait for it to end or "
            f"stop it, or give another --save"
        ) from None
    except OSError as e:  # a filesystem without flock (e.g. Lustre mounted without -o flock)
        print(
            f"warning: --save {root}: cannot lock {LOCK} ({e.strerror}); a second run writing "
            f"into this directory would not be noticed",
            file=sys.stderr,
            flush=True,
        )
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
    os.fsync(fd)
    claim = _claims[root.resolve()] = _Claim(root, fd, tracker=None)
    claim.tracker = read_tracker(root, "--save")
    return claim


def _checkpoints_not_resumed(root: Path, load, finetune: bool) -> str | None:
    """Why this run must not save into ``root``: it holds checkpoints that this run does not
    resume from, the tracker's (or, without a tracker, the newest) one. None if it may."""
    tracked = read_tracker(root, "--save")
    saved = _saved_checkpoints(root)
    if tracked is None and not saved:
        return None
    latest = checkpoint_dir(root, tracked) if tracked is not None else saved[-1]
    if load is None:
        why = "this run has no --load"
    elif finetune:
        why = "--finetune starts this run at iteration 0"
    else:
        loaded = find_checkpoint(load)  # raises what load_checkpoint would raise
        if loaded is not None and loaded.resolve() == latest.resolve():
            return None
        why = f"this run loads {loaded or load}, not {latest}"
    upto = f"iteration {tracked}" if tracked is not None else f"{latest.name} (no {TRACKER})"
    return (
        f"--save {root} already holds checkpoints up to {upto} and {why}: give --load {root} "
        f"to resume from them, or another --save (or delete {root}) to start over"
    )


def _writer_results_queue_dies_with_this_process() -> None:
    """dist_checkpointing's writers report through the queue of a multiprocessing manager, a
    process it spawns at the first save. Its own manager would outlive this process when that
    is killed (and keep multiprocessing's resource tracker alive): this one dies with it."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(exit_with_parent, (os.getpid(),))  # from the main thread, as saves are
        filesystem_async._results_queue = manager.Queue()  # its proxy keeps the manager alive


def _remove_older_checkpoints(root: Path, latest: int, keep: int) -> None:
    """Deletes all but the ``keep`` newest complete checkpoints up to ``latest`` (the one the
    tracker now names). Each goes through a rename to ``.old`` first, so a kill during the
    deletion leaves a leftover (removed by the next save), never a half-deleted iter_* directory
    that looks complete."""
    older = [path for path in _saved_checkpoints(root) if int(path.name[len("iter_") :]) <= latest]
    for path in older[:-keep]:
        doomed = path.with_name(path.name + ".old")
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def _saved_checkpoints(root: Path) -> list[Path]:
    """The complete iter_XXXXXXX directories under ``root``, oldest first (leftovers of killed
    saves, iter_*.tmp and iter_*.old, are not among them)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and _ITERATION_DIR.fullmatch(p.name))


def _remove_leftovers(root: Path) -> None:
    """What killed saves leave behind: iter_*.tmp / iter_*.old directories, tracker temp files."""
    for path in root.glob("iter_*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob("iter_*.old"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(TRACKER + ".tmp-*"):
        path.unlink(missing_ok=True)


def _replace_dir(new: Path, final: Path) -> None:
    """Moves ``new`` to ``final``. An existing ``final`` (this run's own, saved again after a
    kill between its rename and the tracker's) is moved aside first and deleted after: renames,
    no copy in between."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old)
    else:
        os.replace(new, final)


def saved_description(path: Path, common: dict, flag: str = "--load") -> ModelDescription:
    """The model a checkpoint holds: its description, or the run flags of an older checkpoint."""
    try:
        return ModelDescription.from_checkpoint_state(common)
    except DescriptionError as e:
        raise CheckpointError(f"{flag} {path}: {e}") from None


def resumed_padded_vocab_size(load, vocab_size: int, tensor_model_parallel_size: int) -> int | None:
    """The rows of the vocabulary of the checkpoint --load names, which a run resuming it keeps: the
    padding is a storage detail (the loss leaves it out), so a checkpoint padded for TP2 resumes under
    TP1 as it is. None when --load has no checkpoint yet."""
    path = find_checkpoint(load)
    if path is None:
        return None
    padded = saved_description(path, _common_state(path)).padded_vocab_size
    if padded < vocab_size:
        raise CheckpointError(
            f"--load {path}: the checkpoint's vocabulary has {padded} rows, fewer than "
            f"this run's tokenizer's {vocab_size} ids"
        )
    if padded % tensor_model_parallel_size:
        raise CheckpointError(
            f"--load {path}: the checkpoint's vocabulary of {padded} rows (padding "
            f"included) does not split over --tensor-model-parallel-size "
            f"{tensor_model_parallel_size}"
        )
    return padded


def _common_state(path: Path, flag: str = "--load") -> dict:
    try:
        return dist_checkpointing.load_common_state_dict(str(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - many types for bad files
        raise CheckpointError(f"{flag} {path}: not a readable checkpoint ({_one_line(e)})") from None


def _check_loadable(path: Path, common: dict, description: ModelDescription | None, config: LoadConfig) -> None:
    """That the checkpoint's common state fits this run: the same weight shapes, and an
    optimizer state unless this run asks for none (as Megatron-LM, never a silent fresh one)."""
    if description is not None:
        for flag, mine, saved in description.shape_differences(saved_description(path, common)):
            raise CheckpointError(f"--load {path}: checkpoint has {flag} {saved}, this run {mine}")
    if "opt_param_scheduler" not in common and config.with_optimizer and not config.finetune:
        raise CheckpointError(
            f"--load {path}: the checkpoint holds no optimizer state (saved with --no-save-optim); "
            f"give --no-load-optim to go on with a fresh optimizer, or --finetune"
        )


def find_checkpoint(load, flag: str = "--load") -> Path | None:
    """The checkpoint directory --load names: an iter_XXXXXXX directory itself, or the one a run
    directory's tracker names. None for a run directory with no checkpoint yet (no tracker, no
    iter_* directory; leftovers of killed saves do not count). Raises CheckpointError otherwise."""
    root = Path(load)
    if not root.is_dir():
        raise CheckpointError(f"{flag} {load}: " + ("not a directory" if root.exists() else "no such directory"))
    if root.name.startswith("iter_") or (root / "metadata.json").exists():
        return _complete(root, flag)  # a checkpoint itself, iter_XXXXXXX(.tmp) included
    iteration = read_tracker(root, flag)
    if iteration is None:
        saved = [p.name for p in _saved_checkpoints(root)]
        if saved:
            raise CheckpointError(
                f"{flag} {load}: has {', '.join(saved)} but no {TRACKER}: give {flag} "
                f"{root / saved[-1]} (or write its iteration into the tracker) to resume from it"
            )
        return None
    path = checkpoint_dir(root, iteration)
    if not path.is_dir():
        raise CheckpointError(f"{flag} {load}: {TRACKER} names iteration {iteration} but {path.name} is missing")
    return _complete(path, flag)


def _complete(path: Path, flag: str) -> Path:
    if not (path / "metadata.json").exists():
        raise CheckpointError(f"{flag} {path}: no metadata.json in it (an incomplete or damaged checkpoint)")
    return path


def resolve_load_dir(load: str, flag: str = "--load") -> Path:
    """The checkpoint directory --load points at (see find_checkpoint); raises if it has none."""
    path = find_checkpoint(load, flag)
    if path is None:
        raise CheckpointError(f"{flag} {load}: no {TRACKER} and no checkpoint in it")
    return path


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line; for torch's CheckpointException (tracebacks of every failed
    rank in its message), the first failed rank's exception."""
    if isinstance(error, CheckpointException) and error.failures:
        rank, (error, _) = min(error.failures.items())
        return f"rank {rank}: {_one_line(error)}"
    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_checkpoint(config: LoadConfig, model_chunks, optimizer, scheduler) -> tuple[int, int]:
    """Loads into the model (and optimizer, scheduler, RNG unless disabled or --finetune).
    Returns (iteration, consumed_samples) to resume from; (0, 0) with a warning when --load is
    a run directory with no checkpoint yet. Collective: every rank calls it."""
    load = config.path
    path = find_checkpoint(load)
    if path is None:
        if is_logging_rank():
            print(
                f"warning: --load {load}: no checkpoint in it yet (no {TRACKER}, no iter_* "
                f"directory); starting from scratch",
                file=sys.stderr,
                flush=True,
            )
        return 0, 0
    common = _common_state(path)
    _check_loadable(path, common, unwrap(model_chunks[0]).description, config)
    weights_only = config.finetune
    with_optimizer = config.with_optimizer and not weights_only
    saved_layout = tuple(common["layout"]) if "layout" in common else _saved_layout(common.get("args", {}))
    with_rng = config.with_rng and not weights_only and saved_layout == config.layout
    state = _sharded_state(
        model_chunks,
        optimizer,
        scheduler,
        with_optimizer=with_optimizer,
        with_rng=with_rng and common.get("rng_saved", False),
        is_loading=True,
    )
    try:
        loaded = dist_checkpointing.load(state, str(path))
        unwrap(model_chunks[0]).load_state_dict(loaded["model"])
        if with_optimizer:
            _load_optimizer(optimizer, loaded["optimizer"])
    except CheckpointException as e:  # a BaseException: torch could not read shard data
        raise CheckpointError(
            f"--load {path}: unreadable shard data, a truncated or damaged checkpoint ({_one_line(e)})"
        ) from None
    except Exception as e:  # noqa: BLE001 - dist_checkpointing raises many types
        raise CheckpointError(f"--load {path}: {_one_line(e)}") from None
    if with_optimizer:
        _load_scheduler(path, scheduler, loaded["opt_param_scheduler"], config)
    if "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    if weights_only:
        print_rank_last(f"loaded the weights of {path} (--finetune: from iteration 0)")
        return 0, 0
    iteration = int(loaded["iteration"])
    print_rank_last(f"loaded {path} at iteration {iteration}")
    return iteration, int(loaded["consumed_samples"])


def _load_scheduler(path: Path, scheduler, saved: dict, config: LoadConfig) -> None:
    """Megatron's scheduler asserts that the run's schedule is the checkpoint's; as in Megatron-LM,
    --override-opt_param-scheduler keeps this run's, --use-checkpoint-opt_param-scheduler the
    checkpoint's (e.g. to train past the --train-iters the schedule was made for)."""
    scheduler.override_opt_param_scheduler = config.override_scheduler
    scheduler.use_checkpoint_opt_param_scheduler = config.use_checkpoint_scheduler
    try:
        scheduler.load_state_dict(saved)
    except AssertionError as e:
        mismatch = re.search(r"class input value (.*) and checkpoint ?value (.*) for (.*) do not match", str(e))
        what = (
            f"{mismatch[3]} {mismatch[1]}, the checkpoint's {mismatch[2]} (steps count samples)"
            if mismatch
            else " ".join(str(e).split())
        )
        raise CheckpointError(
            f"--load {path}: this run's LR schedule differs from the checkpoint's: {what}; give "
            f"--override-opt_param-scheduler to use this run's, --use-checkpoint-opt_param-scheduler "
            f"the checkpoint's"
        ) from None


def _saved_layout(flags: dict) -> tuple:
    """(TP, PP, DP) from the run flags an older checkpoint holds instead of its layout."""
    return tuple(
        flags.get(k) for k in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "data_parallel_size")
    )


def _restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(rng["tracker"])


def load_baseline_decoder(load, model) -> None:
    """Initializes a Free Transformer's decoder (every weight but the latent's) from a baseline
    checkpoint; the encoder, mapper and post-sampler keep their fresh initialization."""
    path = resolve_load_dir(load, "--init-from-baseline")
    saved = saved_description(path, _common_state(path, "--init-from-baseline"), "--init-from-baseline")
    if not saved.baseline:
        raise CheckpointError(
            f"--init-from-baseline {path}: not a baseline checkpoint (it was trained without --baseline)"
        )
    decoder_fields = [f for f in SHAPE_FLAGS if f not in ("baseline", "latent_bits", "injection_layer")]
    for flag, mine, theirs in model.description.shape_differences(saved, decoder_fields):
        raise CheckpointError(f"--init-from-baseline {path}: checkpoint has {flag} {theirs}, this run {mine}")
    decoder_state = {k: v for k, v in model.sharded_state_dict().items() if ".latent." not in k}
    try:
        loaded = dist_checkpointing.load({"model": decoder_state}, str(path))["model"]
    except (Exception, CheckpointException) as e:  # noqa: BLE001
        raise CheckpointError(f"--init-from-baseline {path}: {_one_line(e)}") from None
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    assert not unexpected, unexpected
    assert all(".latent." in key or key.endswith("_extra_state") for key in missing), missing
