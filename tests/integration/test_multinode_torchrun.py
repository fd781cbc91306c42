"""Two-node training as on a cluster, with the real torchrun: two agents on this machine
(`--nnodes 2 --node-rank 0|1`, 2 workers each) meet at a c10d rendezvous on 127.0.0.1 and train
the tiny model of tests/tiny.py with TP 2 inside each "node" and DP 2 across them. The losses are
those of the same layout started by one agent, and the two-node checkpoint resumes on one node
under another layout (TP 1 x DP 2)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import TINY_PRETRAIN_ARGV

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
# "[date] iteration 3/ 4 | ... | lm loss: 1.465223E+00 | kl: 4.827386E-01 | ..."
LOSSES = re.compile(r"iteration\s+(\d+)/.*?\| lm loss: (\S+) \| kl: (\S+) \|")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(nnodes: int, node_rank: int, nproc: int, endpoint: str, pretrain_args: list[str]) -> list[str]:
    # Node 0 hosts the rendezvous store, as where the endpoint is node 0's address.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nnodes),
        "--node-rank",
        str(node_rank),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        "megatron-free-test",
        "--rdzv-conf",
        f"is_host={int(node_rank == 0)}",
        "--max-restarts",
        "0",
        "-m",
        "megatron_free.pretrain",
        *TINY_PRETRAIN_ARGV,
        *pretrain_args,
    ]


def _run_agents(commands: list[list[str]]) -> list[str]:
    """Starts every agent at once, waits for all (TIMEOUT_S); returns their outputs. Fails with
    every agent's output if one exits non-zero or they time out."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    agents = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command in commands
    ]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for agent in agents:
            os.killpg(agent.pid, 9)
        outputs = [agent.communicate()[0] for agent in agents]
        pytest.fail(f"torchrun agents still running after {TIMEOUT_S} s:\n" + _joined(outputs))
    failed = [agent.returncode for agent in agents if agent.returncode != 0]
    assert not failed, f"agents exited {[a.returncode for a in agents]}:\n" + _joined(outputs)
    return outputs


def _joined(outputs: list[str]) -> str:
    return "\n".join(f"--- agent {i}\n{output[-4000:]}" for i, output in enumerate(outputs))


def _losses(output: str) -> dict[int, tuple[str, str]]:
    """{iteration: (lm loss, kl)} as the last rank logs them."""
    return {int(it): (lm, kl) for it, lm, kl in LOSSES.findall(output)}


@pytest.mark.slow
def test_two_nodes_match_one_node_and_resume_on_one_node_with_another_layout(tmp_path):
    layout = ["--tensor-model-parallel-size", "2"]
    one_agent = _run_agents([_torchrun(1, 0, 4, f"127.0.0.1:{_free_port()}", layout)])
    expected = _losses(one_agent[0])
    assert sorted(expected) == [1, 2, 3, 4], one_agent[0][-3000:]

    # The two-node run stops (and saves) after iteration 2, as a job at its time limit would.
    endpoint = f"127.0.0.1:{_free_port()}"
    save = ["--save", str(tmp_path / "checkpoints"), "--exit-interval", "2"]
    two_nodes = _run_agents([_torchrun(2, rank, 2, endpoint, [*layout, *save]) for rank in (0, 1)])
    # The last rank, which logs, is on one of the two nodes; the other logs no iteration.
    logged = [output for output in two_nodes if _losses(output)]
    assert len(logged) == 1, _joined(two_nodes)
    assert "world size 4 = TP 2 x PP 1 x CP 1 x DP 2" in logged[0], logged[0][-3000:]
    got = _losses(logged[0])
    assert sorted(got) == [1, 2], logged[0][-3000:]
    assert got == {it: expected[it] for it in (1, 2)}  # as printed: the same to 7 digits
    assert (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"

    resumed = _run_agents([_torchrun(1, 0, 2, f"127.0.0.1:{_free_port()}", ["--load", str(tmp_path / "checkpoints")])])[
        0
    ]
    assert "world size 2 = TP 1 x PP 1 x CP 1 x DP 2" in resumed and "at iteration 2" in resumed, resumed[-3000:]
    got = _losses(resumed)
    assert sorted(got) == [3, 4], resumed[-3000:]
    for iteration in (3, 4):
        for value, reference in zip(got[iteration], expected[iteration]):
            assert float(value) == pytest.approx(float(reference), rel=1e-5), (iteration, got, expected)
