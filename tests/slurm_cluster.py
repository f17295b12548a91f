"""A real single-node Slurm on this machine, for tests/test_slurm.py.

Debian's `munge` and `slurm-wlm` daemons (munged, slurmctld, slurmd) run with a generated
slurm.conf, and all their state, logs and sockets live in one folder. The ports are free
ones, the node's name is unique and job ids start at random (a job's Ray ports follow its
id), so two test runs on one machine do not meet. The node declares this machine's CPUs;
processes are tracked by cgroup, as on a real cluster.

slurmd runs in its own PID namespace (`unshare --pid --mount-proc`), because a compute
node has its own processes: a job sees only those of its node. That is what `ray
symmetric-run` assumes (it refuses a node where any Ray runs, and ends with `ray stop`,
which stops every Ray of the user's it can see), and without it a job could neither start
beside the test session's Ray nor be kept from stopping it. Killing the namespace's
first process ends whatever a job left behind, and `node_processes` shows what that is.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

INSTALL = "sudo apt-get install -y slurm-wlm munge"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "scancel", "unshare")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
PATH_WITH_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_reason() -> str | None:
    """Why a test Slurm cannot start here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool, path=PATH_WITH_SBIN) is None]
    if missing:
        return f"Slurm is not installed (no {', '.join(missing)}); install it with: {INSTALL}"
    if os.geteuid() != 0:
        return "the test Slurm needs root: slurmd starts jobs as their users and sets up their cgroups"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SLURM_CONF = """\
ClusterName=sweeptest
FirstJobId={first_job_id}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


# The node's first process, as init is on a real node: starts slurmd, reaps every process
# that ends orphaned (Ray's daemons do; unreaped, `ray stop` waits for them in vain), and
# exits with slurmd, which ends the namespace.
NODE_INIT = """
import os, subprocess, sys
slurmd = subprocess.Popen(sys.argv[1:])
while os.wait()[0] != slurmd.pid:
    pass
"""


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class SlurmCluster:
    """munged, slurmctld and one slurmd (in its own PID namespace); `env` points Slurm's
    commands at it (SLURM_CONF), and jobs inherit it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.node = f"sweep{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": PATH_WITH_SBIN}
        self._daemons: list[subprocess.Popen] = []

    def start(self) -> SlurmCluster:
        folder = self.folder
        for sub in ("munge", "state", "spool", "log"):
            (folder / sub).mkdir(mode=0o711, parents=True, exist_ok=True)
        folder.chmod(0o711)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        host = socket.gethostname().split(".")[0]
        (folder / "slurm.conf").write_text(SLURM_CONF.format(
            host=host, node=self.node, folder=folder, cpus=os.cpu_count(), first_job_id=random.randrange(1, 10**6),
            ctld_port=_free_port(), slurmd_port=_free_port()))
        # Slurm's autodetection takes this machine's hybrid hierarchy for cgroup v2
        version = "v1" if Path("/sys/fs/cgroup/freezer").is_dir() else "v2"
        (folder / "cgroup.conf").write_text(f"CgroupPlugin=cgroup/{version}\n")
        munge = folder / "munge"
        self._daemon(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
                      f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                      f"--seed-file={munge}/munged.seed"], "munged")
        self._wait(lambda: (munge / "munge.socket").exists(), "munged's socket")
        self._daemon(["slurmctld", "-D", "-f", self.env["SLURM_CONF"]], "slurmctld")
        self._daemon(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-c", NODE_INIT,
                      "slurmd", "-D", "-N", self.node, "-f", self.env["SLURM_CONF"]], "slurmd")
        self._wait(lambda: self.run("sinfo", "--noheader", "--format=%T", check=False).strip() == "idle",
                   "the node to be idle")
        return self

    def _daemon(self, argv: list[str], name: str) -> None:
        log = open(self.folder / "log" / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
        self._daemons.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline or any(d.poll() is not None for d in self._daemons):
                logs = "\n".join(p.read_text()[-2000:] for p in sorted((self.folder / "log").iterdir()))
                raise RuntimeError(f"test Slurm: gave up waiting for {what}\n{logs}")
            time.sleep(0.2)

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Dependency, ...)."""
        fields = self.run("scontrol", "show", "job", "--oneliner", job_id).split()
        return dict(field.split("=", 1) for field in fields if "=" in field)

    def wait_until_finished(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (info := self.job(job_id))["JobState"] not in FINISHED:
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                raise TimeoutError(f"job {job_id} still {info['JobState']} after {timeout} s")
            time.sleep(1)
        return info

    def node_processes(self) -> list[str]:
        """The command lines of the processes on the node other than its init and slurmd:
        what jobs left running."""
        init = _children(self._daemons[-1].pid)[0]
        daemons = {init, *(pid for pid in _children(init) if Path(f"/proc/{pid}/comm").read_text().strip() == "slurmd")}
        node = os.readlink(f"/proc/{init}/ns/pid")
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") == node and int(pid) not in daemons:
                    found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except OSError:  # ended meanwhile
                continue
        return found

    def stop(self) -> None:
        """Cancel every job, then end the node (its namespace and every process in it),
        the controller and munged, and remove the node's cgroups."""
        self.run("scancel", "--full", f"--nodelist={self.node}", check=False)
        for daemon in reversed(self._daemons):  # slurmd's namespace first: SIGKILL to unshare ends it whole
            daemon.send_signal(signal.SIGKILL if daemon is self._daemons[-1] else signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for controller in Path("/sys/fs/cgroup").glob(f"*/slurm_{self.node}"):
            folders = [p for p in controller.rglob("*") if p.is_dir()]
            for cgroup in sorted(folders, key=lambda p: -len(p.parts)) + [controller]:
                with contextlib.suppress(OSError):  # still in use: the kernel keeps it
                    cgroup.rmdir()
