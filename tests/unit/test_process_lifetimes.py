"""A trainer's forks die with it (megatron_free.parallel.distributed.tie_process_lifetimes), those
forked from its main thread at once (the kernel's parent-death signal) and those forked from
another thread within seconds (a watchdog thread: the kernel's signal follows the forking
thread, which may end before the process)."""

import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

# Ties its forks to itself, forks a sleeper from its main thread and one from another thread
# (which then ends), prints their pids and whether the second one outlived its thread, then dies
# by SIGKILL, as a trainer killed by the OOM killer does.
_TRAINER = """
import os, signal, threading, time
from megatron_free.parallel.distributed import tie_process_lifetimes

tie_process_lifetimes()

def fork_sleeper():
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    return pid

from_main = fork_sleeper()
from_thread = []
thread = threading.Thread(target=lambda: from_thread.append(fork_sleeper()))
thread.start()
thread.join()
time.sleep(0.5)
survived_its_thread = os.waitpid(from_thread[0], os.WNOHANG) == (0, 0)
print(from_main, from_thread[0], survived_its_thread, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_forks_die_with_the_process_that_forked_them():
    trainer = subprocess.Popen([sys.executable, "-c", _TRAINER], cwd=REPO, stdout=subprocess.PIPE, text=True)
    *pids, survived_its_thread = trainer.stdout.readline().split()  # the forks hold the pipe open
    pids = [int(pid) for pid in pids]
    trainer.wait(timeout=60)
    assert len(pids) == 2 and survived_its_thread == "True"
    deadline = time.monotonic() + 5
    try:
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)], "a fork outlived its parent"
    finally:
        for pid in pids:
            if _alive(pid):
                psutil.Process(pid).kill()
