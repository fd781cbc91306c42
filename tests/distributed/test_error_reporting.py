"""The one `error:` line under several ranks: an error every rank hits is printed once, an error
only some ranks hit is printed by them; under torchrun the worker's exit code and the reason show
in torchrun's summary, and torchrun itself exits 1."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.tiny import TINY_PRETRAIN_ARGV

REPO = Path(__file__).resolve().parents[2]


def _report(messages_by_rank):
    """report_error on this rank for each message it is given (None: nothing to report); returns
    what this rank wrote to its stderr."""
    import torch.distributed as dist

    from megatron_free.errors import EXIT_USAGE, report_error

    with tempfile.TemporaryFile("w+") as captured:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            for messages in messages_by_rank:
                message = messages[dist.get_rank()]
                if message is not None:
                    assert report_error(ValueError(message), EXIT_USAGE) == EXIT_USAGE
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        captured.seek(0)
        return captured.read()


def test_an_error_is_printed_once_by_the_ranks_that_hit_it(ranks):
    written = ranks(
        2,
        _report,
        [
            ("every rank", "every rank"),
            (None, "only rank 1"),
            ("rank 0's own", "rank 1's own"),
        ],
    )
    lines = [line for text in written for line in text.splitlines()]
    assert sorted(lines) == sorted(
        ["error: every rank", "error: only rank 1", "error: rank 0's own", "error: rank 1's own"]
    )
    assert "error: only rank 1" in written[1].splitlines()
    assert "error: rank 0's own" in written[0].splitlines()
    assert "error: rank 1's own" in written[1].splitlines()


def _bad_tracker(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("twelve\n")
    return ["--load", str(tmp_path)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, line",
    [
        (lambda tmp: ["--bf16", "--fp16"], "error: --bf16 and --fp16 are exclusive"),
        (
            _bad_tracker,
            "error: --load {tmp}: latest_checkpointed_iteration.txt holds 'twelve', not an iteration number",
        ),
    ],
    ids=["flags", "checkpoint"],
)
def test_torchrun_prints_the_error_line_once(tmp_path, flags, line):
    """Two ranks that both fail, before the process group exists (a flag) and after (--load):
    the line once, whole; the exit code 2 in torchrun's summary, with the reason; the line in the
    error file torchrun writes for a scheduler; the shell gets torchrun's 1."""
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
        *flags(tmp_path),
    ]
    root_cause = tmp_path / "torchrun_error.json"
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", TORCHELASTIC_ERROR_FILE=str(root_cause)),
    )
    output = result.stdout + result.stderr
    expected = line.format(tmp=tmp_path)
    assert result.returncode == 1, output[-3000:]
    assert output.count(expected) == 1, output[-3000:]
    assert re.search(f"^{re.escape(expected)}$", output, re.MULTILINE), output[-3000:]
    assert re.search(r"exitcode\s*: 2 ", output), output[-3000:]
    assert re.search(
        r"traceback : (Argument|Checkpoint)Error, exit code 2 \(a usage, configuration, input or "
        r"checkpoint error\): see the 'error:' line above",
        output,
    ), output[-3000:]
    assert json.loads(root_cause.read_text())["message"]["message"] == expected
