"""The one `error:` line of the command-line tools, printed once per job also under torchrun.

Exit codes: 0 success, 2 a usage, configuration, input or checkpoint error, 3 training stopped on
non-finite losses (--max-skipped-iterations). Under torchrun these are the workers' exit codes:
torchrun itself exits 1 whenever a worker fails and shows each failed worker's code in its
summary ("exitcode : 2"), next to the reason this module writes to the worker's error file.

Every rank that fails reports, and an error line is printed by the first rank of the job to report
it: an error every rank hits (a bad flag) appears once, an error only some ranks hit (a damaged
shard one rank loads) is still printed, by one of them. The ranks agree through the job's
TCPStore: torchrun's agent store, or the process group's once it exists. Before the process group
exists and without torchrun's store (another launcher), global rank 0 prints: the errors raised
there come from the flags, the same on every rank. An unreachable store prints on every rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

EXIT_USAGE = 2
EXIT_NON_FINITE = 3
_MEANING = {
    EXIT_USAGE: "a usage, configuration, input or checkpoint error",
    EXIT_NON_FINITE: "training stopped on non-finite losses",
}
_STORE_TIMEOUT_SECONDS = 10


def report_error(error: BaseException, exit_code: int) -> int:
    """Prints ``error: <error>`` (one line, one write) unless another rank of the job already
    printed that line; returns ``exit_code``."""
    line = "error: " + " ".join(str(error).split()) + "\n"
    # First: torchrun may stop this worker while it waits for another rank to print.
    _write_torchelastic_error_file(type(error).__name__, line.strip(), exit_code)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _write(line)
    else:
        _print_once_per_job(line)
    return exit_code


def _write(line: str) -> None:
    sys.stderr.write(line)  # the whole line in one write: lines of several ranks never run together
    sys.stderr.flush()


def _print_once_per_job(line: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and not dist.is_initialized():
        # No store to agree through (rank 0 hosts it only once init_process_group has run); the
        # errors raised before that come from the flags, the same on every rank.
        if os.environ.get("RANK", "0") == "0":
            _write(line)
        return
    # Keyed by torchrun's run and restart too: a restarted worker group reports its errors afresh.
    key = "megatron_free/error/{}/{}/{}".format(
        os.environ.get("TORCHELASTIC_RUN_ID", ""),
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
        hashlib.sha256(line.encode()).hexdigest(),
    )
    timeout = timedelta(seconds=_STORE_TIMEOUT_SECONDS)
    store = None
    try:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
        )
        if store.add(key, 1) > 1:
            # Exit only once that line is out: torchrun stops every worker as soon as one exits.
            store.wait([key + "/printed"], timeout)
            return
    except Exception:  # noqa: BLE001 - no store to reach, or the first rank died before printing
        pass  # better twice than never
    _write(line)
    if store is not None:
        try:
            store.set(key + "/printed", "1")
        except Exception:  # noqa: BLE001 - nobody is left waiting
            pass


def _write_torchelastic_error_file(kind: str, line: str, exit_code: int) -> None:
    """The error file torchrun gives each worker (TORCHELASTIC_ERROR_FILE), in torchelastic's
    format: "message" holds the error line (torchrun copies the first failure's file to its own
    TORCHELASTIC_ERROR_FILE, for schedulers); the summary shows "py_callstack" as the worker's
    "traceback", here the kind and exit code instead of a link on how to get a traceback, so that
    the line is not printed a second time."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    summary = f"{kind}, exit code {exit_code} ({_MEANING.get(exit_code, 'an error')}): see the 'error:' line above"
    try:
        with open(path, "w") as f:
            json.dump(
                {
                    "message": {
                        "message": line,
                        "extraInfo": {"py_callstack": summary, "timestamp": str(int(time.time()))},
                    }
                },
                f,
            )
    except OSError:
        pass  # the summary then shows torchrun's own text


# What megatron-core says on every import or model build where these are expected: on a CPU machine
# (no Transformer Engine or apex: megatron-core falls back to plain PyTorch, as this project means it
# to) and about a TransformerConfig default this project does not set. Each appears once per rank.
_EXPECTED_WARNINGS = (
    r".*(Apex|Transformer Engine).* not installed",
    r"full scope is deprecated",
)


def silence_expected_warnings() -> None:
    """Called by the entry points before megatron-core is imported: its expected notices, not the
    run's, would otherwise open every log."""
    import warnings

    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
