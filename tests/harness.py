"""Runs a function on N gloo ranks (one process each) and returns every rank's result.

The one way tests start ranks: ``run_ranks(world_size, fn, *args)``. ``fn`` must be a module-level
function (it is pickled into each rank); it runs after torch.distributed is initialized from a
torchrun-like environment, and its return value comes back in rank order. If a rank raises, the
others are killed and the failing rank's traceback is raised here.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import traceback

_PRELOAD = ["torch", "megatron.core", "megatron_free.parallel.distributed"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank, world_size, port, fn, args, results):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch

    # Ranks share 2 cores: one intra-op thread each keeps them from oversubscribing.
    torch.set_num_threads(1)
    try:
        from megatron_free.parallel.distributed import _init_process_group, select_device

        select_device()
        _init_process_group(timeout_minutes=5)
        # Serialized to bytes: tensors put on a queue travel as shared-memory handles that die
        # with this process.
        buffer = io.BytesIO()
        torch.save(fn(*args), buffer)
        results.put((rank, True, buffer.getvalue()))
    except BaseException:  # noqa: BLE001 - the traceback goes back to the test
        results.put((rank, False, traceback.format_exc()))
    finally:
        from megatron_free.parallel.distributed import destroy_distributed

        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001 - a failed rank may have left no groups behind
            pass


def run_ranks(world_size: int, fn, *args, timeout: float = 300.0) -> list:
    """Runs ``fn(*args)`` on ``world_size`` gloo ranks; returns the results in rank order."""
    import torch

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world_size, port, fn, args, results)) for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    outputs = {}
    try:
        while len(outputs) < world_size:
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"ranks {sorted(set(range(world_size)) - set(outputs))} of {world_size} "
                    f"gave no result within {timeout:.0f}s"
                ) from None
            if not ok:
                raise RuntimeError(f"rank {rank} of {world_size} failed:\n{value}")
            outputs[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [outputs[rank] for rank in range(world_size)]
