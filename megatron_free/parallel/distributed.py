"""Process-group setup: torch.distributed from torchrun's environment, then megatron-core's
parallel_state, then seeds. NCCL on GPUs, gloo (with the CPU runtime) otherwise.

Also the processes' lifetimes: a trainer dies with the torchrun agent that started it, and every
process a trainer forks (dist_checkpointing's writers, DataLoader workers) dies with the trainer.
torchrun starts its workers in sessions of their own, so a kill -9 of torchrun (what the OOM killer
does) would otherwise leave them training and writing checkpoints.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from megatron_free.parallel.cpu_runtime import cpu_runtime_enabled, enable_cpu_runtime


class ParallelSizeError(ValueError):
    """A parallel size that does not fit the world size; the message names the flag."""


@dataclass(frozen=True)
class ParallelConfig:
    """Parallel layout; the world size is tp * cp * pp * dp, dp being derived."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    sequence_parallel: bool = False

    def __post_init__(self):
        for flag, value in (
            ("--tensor-model-parallel-size", self.tensor_model_parallel_size),
            ("--pipeline-model-parallel-size", self.pipeline_model_parallel_size),
            ("--context-parallel-size", self.context_parallel_size),
        ):
            if value < 1:
                raise ParallelSizeError(f"{flag} must be >= 1, got {value}")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ParallelSizeError("--sequence-parallel needs --tensor-model-parallel-size > 1")

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        """DP size for a world size, or a one-line error naming the flags that do not divide it."""
        if world_size % self.model_parallel_size:
            raise ParallelSizeError(
                f"--tensor-model-parallel-size {self.tensor_model_parallel_size} x "
                f"--pipeline-model-parallel-size {self.pipeline_model_parallel_size} x "
                f"--context-parallel-size {self.context_parallel_size} = "
                f"{self.model_parallel_size} does not divide the world size {world_size}"
            )
        return world_size // self.model_parallel_size


def exit_with_parent(parent_pid: int, started_from_main_thread: bool = True) -> None:
    """Makes this process die (SIGKILL) as soon as its parent ``parent_pid`` does. On Linux the
    kernel sends it (prctl PR_SET_PDEATHSIG) when the *thread* that started this process ends,
    right for a process started from its parent's main thread; otherwise, and elsewhere than
    Linux, a daemon thread polls the parent's pid."""
    if not (sys.platform.startswith("linux") and started_from_main_thread and _kill_on_parent_death()):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # it died before this process asked to die with it
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_parent_death() -> bool:
    pr_set_pdeathsig = 1
    return _libc().prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0


@functools.cache
def _libc():
    """Loaded before any fork (tie_process_lifetimes): a dlopen in a fork child of a process with
    threads can deadlock on the loader's lock."""
    return ctypes.CDLL(None, use_errno=True)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


# (pid, forking from its main thread?) of this process, noted just before each fork.
_forking_parent = (0, True)
_children_tied = False


def tie_process_lifetimes() -> None:
    """Under torchrun this process dies with the agent (its parent); from now on every process
    forked from here dies with this one (and theirs with them: forks inherit the hook)."""
    global _children_tied
    if sys.platform.startswith("linux"):
        _libc()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun's agent, which started this process
        exit_with_parent(os.getppid())
    if not _children_tied:
        os.register_at_fork(before=_note_forking_parent, after_in_child=_exit_with_forking_parent)
        _children_tied = True


def _note_forking_parent() -> None:
    global _forking_parent
    _forking_parent = (os.getpid(), threading.current_thread() is threading.main_thread())


def _exit_with_forking_parent() -> None:
    exit_with_parent(*_forking_parent)


def select_device() -> str:
    """This process's device, chosen by each entry point (and tests/harness.py) before megatron-core
    is used: its GPU (torchrun's LOCAL_RANK), or, on a machine without CUDA, the CPU runtime
    (parallel/cpu_runtime.py), which megatron-core needs to run there at all."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return "cuda"
    enable_cpu_runtime()
    return "cpu"


def _init_process_group(timeout_minutes: int) -> str:
    """Joins torchrun's process group (or makes a one-process one). Returns the backend."""
    if dist.is_initialized():
        return dist.get_backend()
    use_cuda = torch.cuda.is_available()
    if not use_cuda and not cpu_runtime_enabled():
        raise RuntimeError(
            "no CUDA and no CPU runtime: call megatron_free.parallel.distributed.select_device() "
            "first (every entry point does)"
        )
    tie_process_lifetimes()
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" not in os.environ:
        # A plain `python -m ...` run: a single-rank group on a free local port.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(find_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return backend


def find_free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def initialize_distributed(parallel: ParallelConfig, seed: int = 1234, timeout_minutes: int = 30) -> int:
    """Initializes torch.distributed, megatron-core's parallel groups and the RNG seeds.

    Returns the data-parallel size. Raises ParallelSizeError if the layout does not divide the
    world size.
    """
    from megatron.core import parallel_state

    _init_process_group(timeout_minutes)
    dp_size = parallel.data_parallel_size(dist.get_world_size())
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    set_seed(seed)
    return dp_size


def set_seed(seed: int) -> None:
    """Seeds python, numpy and torch identically on every rank, then megatron's RNG tracker
    (which forks per-TP-rank streams for dropout inside tensor-parallel regions)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_distributed() -> None:
    """Tears down megatron-core's groups and the default process group."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
