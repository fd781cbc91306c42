"""The paper's launch scripts on a real slurm cluster (the `slurm` fixture of conftest.py: munged,
slurmctld and slurmd of Debian's slurm-wlm on this machine, see slurm_cluster.py), submitted with
sbatch as a user would and checked with slurm's own tools (scontrol show job, scancel).

The job script is free_1p5b_47b.sh with its run (config, sweep, token budget) swapped for the
tiny toy-task model: its #SBATCH header and its `source .../common.sh` and `slurm_launch` lines
are the paper script's. sbatch options override the header where this cluster needs it: one node
with 2 GPUs (--nodes=1 --gpus-per-node=2; the node's GPUs are device-less gres, the 2 torchrun
workers run on CPU with gloo), --array, --time, --signal, --output.

No stand-ins: srun, scontrol, squeue, sbatch and scancel are slurm's. Not covered here: more than
one node per job (one slurmd per host; torchrun's two-node rendezvous is test_multinode_torchrun.py),
real GPUs, pyxis containers (CONTAINER_IMAGE), and the USR1 that --signal=B:USR1@300 sends before
the limit (in a job of a few minutes slurm sends it at an unpredictable moment, so the tests move
it past the job's end; the trap that requeues on it is not exercised).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.integration.slurm_cluster import TERMINAL_STATES
from tests.tiny import TINY_PRETRAIN_ARGV

REPO = Path(__file__).resolve().parents[2]
PAPER_SCRIPT = REPO / "launch_scripts" / "free_1p5b_47b.sh"
TRACKER = "latest_checkpointed_iteration.txt"


def _tiny_flags(*dropped: str) -> list[str]:
    """TINY_PRETRAIN_ARGV without the flags the launch script sets itself."""
    flags, argv = [], list(TINY_PRETRAIN_ARGV)
    while argv:
        flag = argv.pop(0)
        value = [argv.pop(0)] if argv and not argv[0].startswith("--") else []
        if flag not in dropped:
            flags += [flag, *value]
    return flags


def toy_job(tmp_path: Path, train_iters: int, *extra: str) -> Path:
    """free_1p5b_47b.sh running the tiny toy-task model (baseline and kappa 1 bit) instead."""
    text = PAPER_SCRIPT.read_text()
    paper_run = re.search(r"^CONFIG=.*?(?=^source )", text, re.MULTILINE | re.DOTALL)
    extra_args = [
        *_tiny_flags("--toy-data", "--free-bits", "--train-iters"),
        "--lr-warmup-iters",
        "0",
        "--generate-samples",
        "0",
        "--eval-interval",
        "1000",
        "--exit-signal-handler",
        *extra,
    ]
    toy_run = (
        f"CONFIG=examples/toy_free_transformer.yaml\nRUN_PREFIX=toy\nSWEEP=(baseline 1)\n"
        f"DATA_SOURCE=config\nTRAIN_ITERS={train_iters}\nEXTRA_ARGS=({' '.join(extra_args)})\n\n"
    )
    script = tmp_path / PAPER_SCRIPT.name
    script.write_text(text[: paper_run.start()] + toy_run + text[paper_run.end() :])
    return script


def submit(slurm, tmp_path: Path, script: Path, *options: str, **env: str) -> str:
    """sbatch from the repository root, as the scripts ask, with this environment (sbatch's
    default --export=ALL); returns the job id."""
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "LAUNCH_MODE"}
    job_env.update(
        PATH=f"{Path(sys.executable).parent}:{job_env['PATH']}",  # the python with this project
        OUTPUT_ROOT=str(tmp_path / "runs"),
        OMP_NUM_THREADS="1",
        **env,
    )
    return slurm.sbatch(f"--output={tmp_path}/%x-%A_%a.log", *options, str(script), cwd=REPO, env=job_env)


# The paper scripts' 4 nodes x 8 GPUs -> this cluster's one node with 2.
ONE_NODE = ("--nodes=1", "--gpus-per-node=2")


def job_log(record: dict) -> str:
    return Path(record["StdOut"]).read_text()


def checkpoint_iteration(tmp_path: Path, run: str) -> int:
    return int((tmp_path / "runs" / run / "checkpoints" / TRACKER).read_text())


def _summary(records) -> str:
    return "\n".join(
        f"{r['JobId']} {r['JobState']} {r['ExitCode']}:\n" + job_log(r)[-3000:]
        for r in records
        if Path(r["StdOut"]).exists()
    )


@pytest.mark.slow
def test_array_sweep_trains_one_run_per_task(slurm, tmp_path):
    """--array=0-1 of the paper's header (24 h limit): task 0 trains the baseline, task 1 kappa 1
    bit, each to its planned iteration; scontrol reports both COMPLETED with exit 0."""
    job = submit(slurm, tmp_path, toy_job(tmp_path, train_iters=3), *ONE_NODE, "--array=0-1")
    records = slurm.wait(job, timeout=300)
    summary = _summary(records)
    by_task = {r["ArrayTaskId"]: r for r in records}
    assert sorted(by_task) == ["0", "1"], summary
    for task, run, latent_flag in (("0", "toy_baseline", "--baseline"), ("1", "toy_kappa1", "--free-bits 1")):
        record = by_task[task]
        assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "0"), summary
        log = job_log(record)
        assert "plan: ok train_iters=3 world_size=2" in log, summary
        assert f"run {run}: 1 nodes x 2 GPUs, restart 0:" in log and latent_flag in log, summary
        assert f"run {run} finished at iteration 3" in log, summary
        assert checkpoint_iteration(tmp_path, run) == 3


@pytest.mark.slow
def test_time_limit_saves_exits_and_the_requeued_job_resumes(slurm, tmp_path):
    """--time=5 and EXIT_MARGIN_MIN 4.96: the margin leaves training at most 2.4 s of the job's
    time (read from squeue), less than its set-up (imports alone take longer), so the first run
    saves and exits 0 after iteration 1, before the limit; the batch script requeues the job
    (scontrol requeue) and slurm runs it again (Restarts=1, the same log appended): it resumes
    from the checkpoint to the planned iteration 2.
    --signal=B:USR1@60: the header's 300 s warning would come at once in a 5-minute job. Slurm
    holds a requeued job for 2 minutes (BeginTime, not configurable): the test starts it at once
    with scontrol update StartTime=now."""
    job = submit(
        slurm,
        tmp_path,
        toy_job(tmp_path, train_iters=2),
        *ONE_NODE,
        "--array=1",
        "--time=5",
        "--signal=B:USR1@60",
        EXIT_MARGIN_MIN="4.96",
        MIN_TRAIN_MIN="0",
    )
    (record,) = slurm.wait(
        job,
        timeout=240,
        until=lambda records: records[0]["Reason"] == "BeginTime" or records[0]["JobState"] in TERMINAL_STATES,
    )
    assert record["Restarts"] == "1", _summary([record])
    # The requeue killed the first run's processes: let the node finish with them (COMPLETING) before
    # the second run starts, and give that run room (10 minutes) so it resumes however slow its start.
    deadline = time.monotonic() + 120
    while slurm.command("sinfo", "-h", "-o", "%T").strip() != "idle" and time.monotonic() < deadline:
        time.sleep(1)
    # slurmd refuses a launch whose credential is not newer, in whole seconds, than the kill that
    # revoked the job's credential ("Job N already killed, do not launch batch job"): a restart in
    # the same second as the requeue's kill fails the job. Slurm's own 2-minute hold avoids this.
    time.sleep(2)
    slurm.command("scontrol", "update", f"JobId={record['JobId']}", "StartTime=now", "TimeLimit=10")
    records = slurm.wait(job, timeout=240)
    (record,) = records
    summary = _summary(records)
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), (
        summary + "\n" + slurm.logs()
    )
    log = job_log(record)
    first, _, second = log.partition("restart 1:")
    assert re.search(r"--exit-duration-in-mins 0\.0\d+", first), summary
    assert "exiting at iteration 1: ran longer than --exit-duration-in-mins" in first, summary
    assert f"requeueing job {record['JobId']} (checkpoint at iteration 1 of 2)" in first, summary
    assert re.search(r"^loaded \S+ at iteration 1$", second, re.MULTILINE), summary
    assert "run toy_kappa1 finished at iteration 2" in second, summary
    assert checkpoint_iteration(tmp_path, "toy_kappa1") == 2


@pytest.mark.slow
def test_scancel_sigterm_saves_and_exits_zero(slurm, tmp_path):
    """`scancel --signal=TERM` while training (slurm signals the torchrun step, not the batch
    shell): the workers finish their iteration, save and exit; the job ends COMPLETED with exit 0,
    its checkpoint at the iteration it stopped at, and is not requeued (a stop, not a time limit)."""
    job = submit(slurm, tmp_path, toy_job(tmp_path, train_iters=100000), *ONE_NODE, "--array=1")
    (record,) = slurm.wait(job, timeout=240, until=_training_started)
    slurm.command("scancel", "--signal=TERM", record["JobId"])
    records = slurm.wait(job, timeout=120)
    (record,) = records
    summary = _summary(records)
    log = job_log(record)
    stopped = re.search(r"exiting at iteration (\d+): received SIGTERM", log)
    assert stopped, summary
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), summary
    assert checkpoint_iteration(tmp_path, "toy_kappa1") == int(stopped[1])
    assert f"run toy_kappa1 stopped by SIGTERM, checkpoint at iteration {stopped[1]}: not requeueing" in log, summary
    assert record["Restarts"] == "0", summary


@pytest.mark.slow
def test_usr1_before_the_time_limit_requeues_at_once(slurm, tmp_path):
    """The USR1 that --signal=B:USR1@300 sends the batch shell 5 minutes before the limit (sent
    here with scancel --batch --signal=USR1: slurm's own comes at an unpredictable moment of a
    short job): the trap requeues the job while it trains; slurm then stops it, SIGTERM first, and
    the workers save before the kill; the job is pending again, Restarts=1."""
    job = submit(slurm, tmp_path, toy_job(tmp_path, train_iters=100000), *ONE_NODE, "--array=1")
    (record,) = slurm.wait(job, timeout=240, until=_training_started)
    slurm.command("scancel", "--batch", "--signal=USR1", record["JobId"])
    (record,) = slurm.wait(job, timeout=120, until=lambda records: records[0]["JobState"] == "PENDING")
    summary = _summary([record])
    log = job_log(record)
    assert record["Restarts"] == "1", summary
    assert f"requeueing job {record['JobId']} (5 minutes before the time limit)" in log, summary
    stopped = re.search(r"exiting at iteration (\d+): received SIGTERM", log)
    assert stopped, summary
    assert checkpoint_iteration(tmp_path, "toy_kappa1") == int(stopped[1])
    slurm.command("scancel", record["JobId"])


def _training_started(records) -> bool:
    """The job runs and its log has an iteration line."""
    path = Path(records[0]["StdOut"])
    return (
        records[0]["JobState"] == "RUNNING"
        and path.exists()
        and re.search(r"\] iteration +\d+/", path.read_text()) is not None
    )


@pytest.mark.slow
def test_failed_preflight_plan_stops_before_training(slurm, tmp_path):
    """TP 4 on 2 GPUs: the preflight plan (srun on one node) fails with the planner's one-line
    error; the job stops there, FAILED with exit 1, before torchrun and before any checkpoint."""
    job = submit(slurm, tmp_path, toy_job(tmp_path, 3, "--tensor-model-parallel-size", "4"), *ONE_NODE, "--array=1")
    records = slurm.wait(job, timeout=120)
    (record,) = records
    summary = _summary(records)
    log = job_log(record)
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "1:0"), summary
    assert re.search(
        r"^error: --tensor-model-parallel-size 4 x .* does not divide the world size 2$", log, re.MULTILINE
    ), summary
    assert "error: the planner rejects this run" in log, summary
    assert "run toy_kappa1:" not in log, summary  # common.sh prints it just before torchrun
    assert not (tmp_path / "runs" / "toy_kappa1" / "checkpoints").exists()


@pytest.mark.slow
def test_cpu_smoke_script_runs_under_sbatch(slurm, tmp_path):
    """sbatch runs slurm's copy of a script (in its spool directory): cpu_smoke.sh still finds
    common.sh, from the submit directory; LAUNCH_MODE=plan runs the planner inside the job."""
    job = submit(slurm, tmp_path, REPO / "launch_scripts" / "cpu_smoke.sh", LAUNCH_MODE="plan")
    records = slurm.wait(job, timeout=120)
    (record,) = records
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), _summary(records)
    assert "plan: ok train_iters=20 world_size=2" in job_log(record), _summary(records)
