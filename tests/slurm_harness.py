"""A private one-node SLURM cluster for tests: its own munged, slurmctld and slurmd.

Everything lives in one temporary folder: ``slurm.conf`` (``SLURM_CONF``
points the client commands at it), spool, state and logs; the munge key and
socket in a second one under the system temporary folder. The daemons run in
the foreground as children of the test process, on free ports, and ``stop``
ends exactly those processes, by pid. Needs root (slurmd launches
jobs) and Debian's ``slurmctld slurmd slurm-client munge`` packages
(``.ci/install_slurm.sh``); the fixture skips otherwise.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

#: Daemons and clients the cluster needs.
COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")
#: Job states after which a job never runs again (unless requeued by hand).
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE"}
NODE_NAME = "localhost"
# Daemons live in sbin folders, which ordinary users' PATH often lacks.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def find_command(name: str) -> str | None:
    """Full path of ``name`` on PATH or in the usual sbin folders, else None."""
    return shutil.which(name, path=SEARCH_PATH)


def missing_commands() -> list[str]:
    """Names from ``COMMANDS`` that are not installed."""
    return [name for name in COMMANDS if find_command(name) is None]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on this machine a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def total_memory_mb() -> int:
    """Physical memory in MiB (from /proc/meminfo; 4096 when unreadable)."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return 4096
    match = re.search(r"MemTotal:\s+(\d+) kB", text)
    return int(match.group(1)) // 1024 if match else 4096


def slurm_config(root: Path, *, controller_port: int, node_port: int, cpus: int, memory_mb: int,
                 munge_socket: Path) -> str:
    """Text of a one-node ``slurm.conf`` keeping all state under ``root``.

    No cgroups (``proctrack/linuxproc``, ``task/none``), no accounting, CPUs
    (not memory) as the consumable resource, and the node's size taken from
    the config rather than the hardware, so it also runs on a one-core machine.
    """
    if cpus < 1 or memory_mb < 1:
        raise ValueError(f"cpus and memory_mb must be positive, got {cpus} and {memory_mb}")
    return "\n".join([
        "ClusterName=brainmritest",
        f"SlurmctldHost={NODE_NAME}",
        f"SlurmctldPort={controller_port}",
        f"SlurmdPort={node_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # A requeued job may start again once its credential expired (default 120 s).
        f"AuthInfo=socket={munge_socket},cred_expire=10",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/builtin",
        "SchedulerParameters=sched_interval=2",
        "MpiDefault=none",
        "ReturnToService=2",
        "SlurmdParameters=config_overrides",
        "InactiveLimit=0",
        "KillWait=20",
        "MinJobAge=3600",
        f"NodeName={NODE_NAME} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=test Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        "",
    ])


def parse_scontrol_record(text: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol show ... --oneliner`` record.

    Values may contain spaces (``Command=train.sh --epochs 3``); a space only
    ends a value when a capitalised ``Key=`` follows.
    """
    pairs = re.findall(r"([A-Z][\w:/]*)=(.*?)(?=\s+[A-Z][\w:/]*=|\s*$)", text.strip())
    return dict(pairs)


@dataclasses.dataclass
class SlurmCluster:
    """A running private cluster. ``env`` is the environment for client commands and jobs."""

    root: Path
    env: dict[str, str]
    munge_folder: Path | None = None
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def log_folder(self) -> Path:
        return self.root / "log"

    def command(self, *arguments: str, check: bool = True, timeout: float = 60,
                cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; return its completed process."""
        result = subprocess.run([find_command(arguments[0]) or arguments[0], *arguments[1:]],
                                capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                env={**self.env, **(env or {})})
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(arguments)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def submit(self, script: Path, *options: str, arguments: tuple[str, ...] = (), cwd: Path,
               env: dict[str, str] | None = None) -> int:
        """``sbatch [options] script [arguments]`` from ``cwd``; return the job id."""
        result = self.command("sbatch", "--parsable", *options, str(script), *arguments, cwd=cwd, env=env)
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The job's ``scontrol show job`` fields (JobState, Restarts, ExitCode, ...)."""
        result = self.command("scontrol", "show", "job", "--oneliner", str(job_id))
        return parse_scontrol_record(result.stdout)

    def wait_for_job(self, job_id: int, timeout: float, poll_seconds: float = 1.0) -> dict[str, str]:
        """Poll until the job reaches a finished state; return its fields. TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if fields.get("JobState") in FINISHED_STATES:
                return fields
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {fields.get('JobState')} after {timeout:.0f} s")
            time.sleep(poll_seconds)

    def node(self) -> dict[str, str]:
        """The node's ``scontrol show node`` fields; empty while the controller does not answer."""
        result = self.command("scontrol", "show", "node", "--oneliner", NODE_NAME, check=False)
        return parse_scontrol_record(result.stdout) if result.returncode == 0 else {}

    def log_tails(self, characters: int = 3000) -> str:
        """The end of every daemon log, for error messages."""
        parts = []
        for path in sorted(self.log_folder.glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-characters:]}")
        return "\n".join(parts)

    def cancel_all_jobs(self, timeout: float = 60) -> None:
        """Cancel every job of this cluster and wait until none is running."""
        if "slurmctld" not in self.processes or self.processes["slurmctld"].poll() is not None:
            return
        listed = self.command("squeue", "--noheader", "--format=%i", check=False)
        job_ids = listed.stdout.split()
        if not job_ids:
            return
        self.command("scancel", *job_ids, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.command("squeue", "--noheader", "--format=%i", check=False)
            if listed.returncode != 0 or not listed.stdout.split():
                return
            time.sleep(1)

    def stop(self) -> None:
        """Cancel the jobs, then end slurmd, slurmctld and munged (the processes started here)."""
        try:
            self.cancel_all_jobs()
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                process = self.processes.pop(name, None)
                if process is None or process.poll() is not None:
                    continue
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=20)
            if self.munge_folder is not None:
                shutil.rmtree(self.munge_folder, ignore_errors=True)

    def start_daemon(self, name: str, *arguments: str) -> None:
        log = open(self.log_folder / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen([find_command(name), *arguments], stdout=log,
                                                stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                                start_new_session=True)
        log.close()

    def wait_until(self, what: str, ready, timeout: float) -> None:
        """Poll ``ready()`` until true; RuntimeError with the daemon logs if a daemon died or time ran out."""
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:.0f} s"
                raise RuntimeError(f"private SLURM cluster: waiting for {what}: {reason}\n{self.log_tails()}")
            time.sleep(0.2)


def start_cluster(root: Path, cpus: int | None = None) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root``; return once the node is idle.

    Args:
        root: an empty folder for the config, spool, state and logs.
        cpus: CPUs the node offers to jobs (default: this machine's count, at least 2).

    Raises:
        RuntimeError: a daemon exited or the node did not come up within a minute
            (the message holds the daemon logs).
    """
    cpus = cpus or max(2, os.cpu_count() or 1)
    for folder in ("state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    # munged wants every folder above its socket open to all (pytest's are not) and a key only
    # its owner reads: the munge files get their own folder in the system temporary folder.
    munge_folder = Path(tempfile.mkdtemp(prefix="brainmri-munge-"))
    munge_folder.chmod(0o755)
    key, munge_socket = munge_folder / "munge.key", munge_folder / "munge.socket"
    controller_port, node_port = free_ports(2)
    config = root / "slurm.conf"
    config.write_text(slurm_config(root, controller_port=controller_port, node_port=node_port, cpus=cpus,
                                   memory_mb=max(total_memory_mb() - 512, 1024), munge_socket=munge_socket))
    env = {**os.environ, "SLURM_CONF": str(config), "PATH": SEARCH_PATH}
    for name in list(env):
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and name != "SLURM_CONF":
            env.pop(name)
    cluster = SlurmCluster(root=root, env=env, munge_folder=munge_folder)
    try:
        subprocess.run([find_command("mungekey"), "--create", "--keyfile", str(key)], check=True,
                       capture_output=True, timeout=30)
        key.chmod(0o600)
        cluster.start_daemon("munged", "--foreground", f"--socket={munge_socket}", f"--key-file={key}",
                             f"--pid-file={munge_folder / 'munged.pid'}",
                             f"--seed-file={munge_folder / 'munged.seed'}")
        cluster.wait_until("munged", munge_socket.exists, timeout=30)
        cluster.start_daemon("slurmctld", "-D", "-i", "-f", str(config))
        cluster.start_daemon("slurmd", "-D", "-N", NODE_NAME, "-f", str(config))
        cluster.wait_until("the node to become idle", lambda: "IDLE" in cluster.node().get("State", ""),
                           timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """A private running cluster for the whole test session; skips when SLURM is not installed."""
    missing = missing_commands()
    if missing:
        pytest.skip(f"SLURM/munge not installed (missing {', '.join(missing)}; see .ci/install_slurm.sh)")
    if os.geteuid() != 0:
        pytest.skip("a private slurmd must run as root")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster) -> SlurmCluster:
    """The session's cluster for one test; jobs still queued or running when the test ends are cancelled."""
    yield slurm_cluster
    slurm_cluster.cancel_all_jobs()
