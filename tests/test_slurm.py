"""A sweep on Slurm: `python -m sweeps.slurm submit` against a real single-node Slurm
(tests/slurm_cluster.py), and the submit command's checks and scripts, which need none.

Without Slurm the real-Slurm tests skip with a reason saying how to install it; under
CI (CI=true), where .ci/run installs it, a missing Slurm fails them.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis import load_sweep
from sweeps.slurm.__main__ import main
from sweeps.slurm.request import time_limit_seconds
from sweeps.slurm.shared_folder import check_shared, mount_type
from tests.slurm_cluster import SlurmCluster, missing_reason
from workers.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = missing_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Slurm tests: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def sweep_command(storage: Path, *extra: str) -> list[str]:
    """Four models of two epochs, no metrics: a few seconds of training each."""
    return ["python", "sweeps/taxonomy.py", "--storage", str(storage), "--name", "four", "--set", "width=2",
            "--set", "seed=0,1,2,3", "--set", "epochs=2", "--set", "milestones=1", "--set", "batch_size=128",
            "--set", "metrics=", "--set", "measure_pairs=false", *extra]


def run_submit(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m sweeps.slurm submit` as a user runs it, from the project folder."""
    return subprocess.run([sys.executable, "-m", "sweeps.slurm", "submit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**env, "RAY_AUTH_MODE": "disabled"})


def submit(slurm: SlurmCluster, *args: str) -> tuple[str, str]:
    """Submit (the storage is this machine's /tmp, the test cluster's only node); the
    job id and what submit printed."""
    done = run_submit(slurm.env, "--allow-local-storage", *args)
    assert done.returncode == 0, done.stderr
    return re.search(r"submitted job (\d+)", done.stdout).group(1), done.stdout


def wait_for(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)
    return found


def settled_processes(slurm: SlurmCluster) -> list[str]:
    """What the node still runs once a finished job's steps have had time to end."""
    deadline = time.monotonic() + 20
    while (left := slurm.node_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_a_submitted_sweep_trains_every_model_once_on_the_node_and_leaves_nothing_running(slurm, tmp_path):
    job, printed = submit(slurm, "--time", "00:15:00", "--", *sweep_command(tmp_path))
    assert f"squeue -j {job}" in printed and f"python -m analysis status {tmp_path / 'four'}" in printed
    info = slurm.wait_until_finished(job, timeout=400)
    output = (tmp_path / "four" / "_slurm" / f"slurm-{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert "ray symmetric-run" in next((tmp_path / "four" / "_slurm").glob("job-*.sbatch")).read_text()
    assert "done: 4 trained or measured, 0 skipped, 0 failed" in output
    address = re.search(r"Ray at (\S+) on 1 node", output).group(1)
    assert f"--address {address}" in output, "the sweep ran on the job's Ray, not one of its own"

    trials = load_sweep(str(tmp_path / "four")).trials
    assert sorted(trials["seed"]) == [0, 1, 2, 3] and trials["trial_key"].is_unique
    assert set(trials["status"]) == {"ok"}
    assert set(trials["host"]) == {socket.gethostname()}
    assert settled_processes(slurm) == []


def test_a_job_cancelled_mid_sweep_is_continued_by_its_resubmission_with_nothing_lost_or_repeated(slurm, tmp_path):
    one_at_a_time = ("--pack", "off", "--max-concurrent", "1")
    job, _ = submit(slurm, "--launcher", "explicit", "--cpus-per-node", "2", "--time", "00:15:00", "--resubmit",
                    "--", *sweep_command(tmp_path, *one_at_a_time))
    folder = tmp_path / "four"
    output = folder / "_slurm" / f"slurm-{job}.out"
    wait_for(lambda: list((folder / "trials").glob("*.parquet")), 300, "the first model's record")
    slurm.run("scancel", "--batch", "--signal=USR1", job)  # what Slurm sends 180 s before the time limit
    queued = wait_for(lambda: output.exists() and re.search(r"queued job (\d+)", output.read_text()), 30,
                      "the job to queue its continuation")
    next_job = queued.group(1)
    assert slurm.job(next_job)["Dependency"].startswith(f"afterany:{job}")
    slurm.run("scancel", job)  # the time limit's kill, early
    assert slurm.wait_until_finished(job, timeout=60)["JobState"] == "CANCELLED"

    info = slurm.wait_until_finished(next_job, timeout=400)
    continued = (folder / "_slurm" / f"slurm-{next_job}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), continued[-3000:]
    done_before = int(re.search(r"(\d+) already done, (\d+) to run", continued).group(1))
    assert 1 <= done_before < 4, "the first job was cancelled mid-sweep"
    assert f"{done_before} already done, {4 - done_before} to run" in continued

    sweep = load_sweep(str(folder))
    assert sorted(sweep.trials["seed"]) == [0, 1, 2, 3] and sweep.trials["trial_key"].is_unique
    epochs = sweep.history.groupby("trial_key")["epoch"].apply(list)
    assert len(epochs) == 4 and all(e == [1, 2] for e in epochs), "every epoch recorded once"
    assert settled_processes(slurm) == []


def test_slurm_refusals_exit_2_with_one_line_and_leave_no_files(slurm, tmp_path):
    done = run_submit(slurm.env, "--allow-local-storage", "--partition", "gpu", "--", *sweep_command(tmp_path))
    assert (done.returncode, done.stderr) == (2, "error: --partition: unknown partition 'gpu'; this cluster has: debug\n")
    done = run_submit(slurm.env, "--allow-local-storage", "--sbatch-arg=--mem=100000000",
                      "--", *sweep_command(tmp_path / "store"))
    assert done.returncode == 2 and done.stderr.startswith("error: sbatch: Batch job submission failed")
    assert done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == [], "the refused job's script and folders are removed"


# --- the submit command without Slurm ----------------------------------------------------


@pytest.fixture
def in_project(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep commands name sweeps/<study>.py from here


def submit_here(capsys, *args: str) -> tuple[int, str, str]:
    """`main` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(["submit", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("launcher", ["symmetric", "explicit"])
def test_dry_run_prints_a_script_bash_accepts_and_writes_nothing(launcher, in_project, tmp_path, capsys):
    command = sweep_command(tmp_path, "--gpus-per-trial", "auto")
    code, script, _ = submit_here(capsys, "--dry-run", "--allow-local-storage", "--launcher", launcher,
                                  "--nodes", "2", "--gpus-per-node", "4", "--cpus-per-node", "16",
                                  "--time", "2-00:00:00", "--partition", "gpu", "--account", "lab",
                                  "--sbatch-arg=--mem=64G", "--setup", "module load cuda/12.1", "--resubmit",
                                  "--", *command)
    assert code == 0
    assert list(tmp_path.iterdir()) == []
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    lines = script.splitlines()
    for directive in ("--job-name=four", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=16",
                      "--gpus-per-task=4", "--time=2-00:00:00", "--partition=gpu", "--account=lab", "--mem=64G",
                      f"--output={tmp_path}/four/_slurm/slurm-%j.out", f"--chdir={ROOT}", "--signal=B:USR1@180"):
        assert f"#SBATCH {directive}" in lines
    assert ("#SBATCH --exclusive" in lines) == (launcher == "symmetric")  # symmetric-run needs whole nodes
    assert "module load cuda/12.1" in lines
    assert f'export PATH={os.path.dirname(sys.executable)}:"$PATH"' in lines
    assert f"sweep=({' '.join(command)})" in lines  # the sweep command verbatim; the job adds --address
    assert ('ray symmetric-run --address "$address" --min-nodes 2' in script) == (launcher == "symmetric")
    assert ("ray start --head --block" in script and 'for node in "${nodes[@]:1}"' in script) == (
        launcher == "explicit")
    assert "--num-gpus=4" in script and 'sbatch --parsable --dependency="afterany:$SLURM_JOB_ID"' in script


BAD_INPUT = [  # (submit options, options added to the small sweep command, what the error line names)
    (["--launcher", "ssh"], [], "argument --launcher: invalid choice: 'ssh' (choose from 'symmetric', 'explicit')"),
    (["--nodes", "0"], [], "argument --nodes: must be >= 1"),
    (["--time", "1:2:3:4"], [], "--time: expected MM, MM:SS, HH:MM:SS"),
    (["--resubmit", "--time", "00:05:00"], [], "--time: --resubmit"),
    (["--sbatch-arg=--nodes=4"], [], "--sbatch-arg: --nodes is set by --nodes"),
    (["--sbatch-arg=mem=4G"], [], "--sbatch-arg: expected an sbatch option"),
    (["--gpus-per-node", "2"], [], "--gpus-per-node: 2 GPUs per node would sit idle"),
    (["--cpus-per-node", "1"], ["--cpus-per-trial", "2"], "--cpus-per-node: a trial asks for 2 CPUs"),
    ([], ["--gpus-per-trial", "1"], "--gpus-per-node: the sweep's trials ask for GPUs"),
    ([], ["--set", "widht=4"], "sweep command: widht: unknown key; did you mean 'width'?"),
    ([], ["--address", "auto"], "sweep command: --address cannot be used here"),
]


@pytest.mark.parametrize(("options", "sweep_options", "named"), BAD_INPUT, ids=[c[2].split(":")[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_naming_the_option_and_writes_nothing(options, sweep_options, named,
                                                                                in_project, tmp_path, capsys):
    code, _, err = submit_here(capsys, "--dry-run", "--allow-local-storage", *options, "--",
                               *sweep_command(tmp_path, *sweep_options))
    assert code == 2 and err.startswith(f"error: {named}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("command", "named"), [(["python", "train.py"], "sweep command: expected 'python sweeps/"),
                                                 ([], "submit: expected the sweep command")])
def test_a_command_that_is_not_a_sweep_is_refused(command, named, in_project, capsys):
    code, _, err = submit_here(capsys, "--dry-run", *(["--", *command] if command else []))
    assert code == 2 and err.startswith(f"error: {named}") and err.count("\n") == 1, err


def test_storage_local_to_this_machine_is_refused_naming_storage(in_project, tmp_path, capsys):
    code, _, err = submit_here(capsys, "--dry-run", "--", *sweep_command(tmp_path))
    assert code == 2 and err.startswith(f"error: --storage: {tmp_path} is local to this machine (/tmp)"), err
    assert "shared file system or s3://" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_no_sbatch_on_path_is_named_before_anything_else(in_project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = submit_here(capsys, "--", *sweep_command(tmp_path))
    assert code == 2 and err == ("error: sbatch: not found on PATH; run submit on a Slurm login node, or add "
                                 "--dry-run to print the script\n")


def test_shared_storage_is_told_by_its_mount(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/home /home nfs4 rw 0 0\n"
                      "tmpfs /scratch tmpfs rw 0 0\nlustre@o2ib:/fs /lus lustre rw 0 0\n")
    assert [mount_type(p, str(mounts)) for p in ("/home/me/sweeps", "/homeless", "/scratch/x", "/lus", "/")] == [
        "nfs4", "ext4", "tmpfs", "lustre", "ext4"]
    assert check_shared("s3://bucket/sweeps", allow_local=False).startswith("object store")
    with pytest.raises(ConfigError, match="--storage: /var/tmp/s is local to this machine"):
        check_shared("/var/tmp/s", allow_local=False)
    assert "allowed by --allow-local-storage" in check_shared("/var/tmp/s", allow_local=True)


@pytest.mark.parametrize(("text", "seconds"), [("90", 5400), ("90:30", 5430), ("12:00:00", 43200), ("2-00", 172800),
                                               ("1-02:03", 93780), ("1-02:03:04", 93784)])
def test_time_limits_read_as_slurm_reads_them(text, seconds):
    assert time_limit_seconds(text) == seconds
