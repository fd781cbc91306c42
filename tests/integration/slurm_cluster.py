"""A real one-node slurm cluster for the tests: munged, slurmctld and slurmd (Debian's slurm-wlm,
installed by .ci/install_slurm.sh) started under a temporary directory with their own ports and
state, and stopped at the end.

The node is this machine (localhost) with its CPUs. It also has two "gpu" generic resources
whose device files are copies of /dev/null, so the launch scripts' #SBATCH --gpus-per-node is
scheduled as on a GPU cluster (submit with --gpus-per-node=2, or 1): slurm sets
SLURM_GPUS_ON_NODE from it and common.sh starts that many torchrun workers, which run on CPU
(gloo). No cgroups (proctrack/linuxproc, task/none), no slurmdbd: jobs are looked up with
``scontrol show job`` (finished jobs stay in slurmctld's memory for MinJobAge), and
jobcomp/filetxt logs each job's end (shown with the daemons' logs when a wait times out).
Needs root, as slurmd does to start jobs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
GPUS_PER_NODE = 2
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_conf(root: Path, cpus: int, memory_mb: int) -> str:
    return f"""\
ClusterName=megatronfree
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# a pending job whose begin time has come starts within seconds, not at the next minute's pass
SchedulerParameters=sched_interval=2
GresTypes=gpu
ReturnToService=2
# finished jobs stay visible to scontrol for 10 minutes; jobs get 10 s between SIGTERM and SIGKILL
MinJobAge=600
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    env: dict = field(default_factory=dict)  # SLURM_CONF for the clients
    daemons: list = field(default_factory=list)

    def command(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """A slurm client command (sbatch, squeue, ...) against this cluster; its stdout."""
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def sbatch(self, *argv: str, cwd: Path, env: dict | None = None) -> str:
        """Submits like a user (sbatch --parsable ... from ``cwd``); returns the job id."""
        result = subprocess.run(
            ["sbatch", "--parsable", *argv],
            cwd=cwd,
            env={**(env or os.environ), **self.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> list[dict]:
        """``scontrol show job`` of a job (every task of an array): one {field: value} each."""
        text = self.command("scontrol", "show", "job", "--oneliner", job_id)
        return [dict(re.findall(r"(\w[\w:/]*)=(\S*)", line)) for line in text.splitlines() if line.strip()]

    def wait(self, job_id: str, timeout: float, until=None) -> list[dict]:
        """Polls scontrol until ``until(records)`` holds (default: every task has ended, in a
        terminal state); returns the records. Raises TimeoutError with the cluster's logs."""
        until = until or (lambda records: all(r["JobState"] in TERMINAL_STATES for r in records))
        deadline = time.monotonic() + timeout
        while True:
            records = self.job(job_id)
            if records and until(records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} after {timeout} s: {records}\n{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} (end)\n" + path.read_text()[-3000:]
            for path in sorted((self.root / "log").iterdir())
            if path.suffix in (".log", ".txt")
        )

    def stop(self) -> None:
        """Cancels what still runs, stops the daemons, then kills whatever they left behind (a
        job's slurmstepd and its processes outlive slurmd): every process with this cluster's
        SLURM_CONF in its environment."""
        if self.daemons and all(process.poll() is None for process in self.daemons):
            jobs = self.command("squeue", "-h", "-o", "%A", check=False).split()
            if jobs:
                self.command("scancel", *jobs, check=False)
                deadline = time.monotonic() + 30
                while self.command("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                    time.sleep(1)
        for process in reversed(self.daemons):
            process.terminate()
        for process in reversed(self.daemons):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        marker = f"SLURM_CONF={self.env['SLURM_CONF']}"
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and marker in "\n".join(f"{k}={v}" for k, v in process.environ().items()):
                    process.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> SlurmCluster:
    """Starts munged, slurmctld and slurmd; returns once the node is idle."""
    if os.geteuid() != 0:
        raise RuntimeError("the test slurm cluster needs root: slurmd starts jobs as their user")
    # munged wants every directory above its socket searchable by all (mkdtemp makes 0700).
    root = Path(tempfile.mkdtemp(prefix="slurm-test-"))
    root.chmod(0o755)
    for name in ("run", "state", "spool", "log", "munge"):
        (root / name).mkdir()
    (root / "run").chmod(0o755)
    (root / "munge").chmod(0o700)
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, cpus, memory_mb))
    # slurmd drops GPUs without a device file: copies of /dev/null stand in for /dev/nvidia*.
    (root / "dev").mkdir()
    for index in range(GPUS_PER_NODE):
        os.mknod(root / "dev" / f"gpu{index}", 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    (root / "gres.conf").write_text(f"Name=gpu File={root}/dev/gpu[0-{GPUS_PER_NODE - 1}]\n")
    cluster = SlurmCluster(root, env={"SLURM_CONF": str(conf)})
    env = {**os.environ, **cluster.env}
    try:
        key = root / "munge" / "munge.key"
        subprocess.run(
            [_binary("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30
        )
        munge_args = [
            f"--socket={root}/run/munge.socket",
            f"--key-file={key}",
            f"--pid-file={root}/run/munged.pid",
            f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge/seed",
        ]
        _start(cluster, [_binary("munged"), "--foreground", *munge_args], env)
        _wait_for(lambda: (root / "run" / "munge.socket").exists(), 20, "munged's socket", cluster)
        _start(cluster, [_binary("slurmctld"), "-D", "-f", str(conf)], env)
        _wait_for(lambda: _ping(cluster), 30, "slurmctld to answer scontrol ping", cluster)
        _start(cluster, [_binary("slurmd"), "-D", "-N", "localhost", "-f", str(conf)], env)
        _wait_for(lambda: _node_state(cluster) == "IDLE", 60, "the node to be idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start(cluster: SlurmCluster, argv: list[str], env: dict) -> None:
    log = open(cluster.root / "log" / f"{Path(argv[0]).name}.out", "w")
    cluster.daemons.append(
        subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    )


def _ping(cluster: SlurmCluster) -> bool:
    try:
        return "UP" in cluster.command("scontrol", "ping", check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return False


def _node_state(cluster: SlurmCluster) -> str:
    text = cluster.command("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10)
    return text.strip().upper()


def _wait_for(condition, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in cluster.daemons:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.args[0]} exited {process.returncode} while waiting for "
                    f"{what}\n{cluster.logs()}\n" + _outputs(cluster)
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s\n{cluster.logs()}\n" + _outputs(cluster))
        time.sleep(0.5)


def _outputs(cluster: SlurmCluster) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()[-2000:]}" for path in (cluster.root / "log").glob("*.out"))
