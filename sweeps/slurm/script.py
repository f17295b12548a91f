"""The sbatch script of a sweep job: Ray across the allocation, the sweep on it, Ray stopped.

Two ways to start Ray (`--launcher`), both from Ray's "Deploying on Slurm" guide:

- `symmetric` (default): one `srun` step runs `ray symmetric-run` on every node, which
  starts Ray there, runs the sweep on the head node and stops Ray. It refuses a node
  where any Ray runs and ends with `ray stop`, which stops every Ray of the user's on the
  node, so the job takes whole nodes (`--exclusive`). It also exits 0 when Ray fails to
  start, so the sweep's own exit status comes back through a file.
- `explicit`: a `ray start --head --block` step on the first node, a `ray start
  --address ... --block` step on each other node, and the sweep in the batch script.
  Ending the steps stops exactly this job's Ray, so it suits clusters that share nodes
  between jobs or forbid symmetric-run.

Either way Ray gets the CPUs and GPUs Slurm allocated (not what it would detect on the
node) and a block of ports picked by the job id, as Ray advises for shared clusters, so
two jobs on one node do not collide. The job's exit status is the sweep's: 0 when every
model and pair is recorded, non-zero otherwise (a cancelled or timed-out job is killed).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from datetime import datetime

from sweeps.slurm.command import SweepCommand
from sweeps.slurm.request import RESUBMIT_WARNING_S, JobRequest

# Ray's ports: blocks of 1,000 from 11000 (Ray's client server keeps its default 10001,
# which it cannot be moved from without ray[client]), all below 32768 where Linux picks the
# ports of outgoing connections; 21 blocks, so jobs whose ids differ by less than 21 never
# share one.
FIRST_PORT = 11000
PORT_BLOCKS = 21
HEAD_WAIT_S = 120  # how long the explicit form waits for the head's Ray before giving up


@dataclass(frozen=True)
class ScriptPlace:
    """Where the script lives and what it runs with."""

    script: str  # the kept script; a resubmission runs this file again
    workdir: str  # the job's working directory: where submit ran (relative --storage agrees)
    python_bin: str  # bin folder of the Python that ran submit: first on the job's PATH

    @property
    def output(self) -> str:
        return os.path.join(os.path.dirname(self.script), "slurm-%j.out")


def _directives(request: JobRequest, command: SweepCommand, place: ScriptPlace) -> list[str]:
    options = [f"--job-name={command.name}", f"--nodes={request.nodes}",
               "--ntasks-per-node=1"]  # one Ray node per Slurm node
    if request.cpus_per_node:
        options.append(f"--cpus-per-task={request.cpus_per_node}")
    if request.gpus_per_node:
        options.append(f"--gpus-per-task={request.gpus_per_node}")
    if request.exclusive:
        options.append("--exclusive")
    options += [f"--{name}={value}" for name, value in
                (("time", request.time), ("partition", request.partition), ("account", request.account)) if value]
    options += [f"--output={place.output}", f"--chdir={place.workdir}"]
    if request.resubmit:
        options.append(f"--signal=B:USR1@{RESUBMIT_WARNING_S}")  # B: only the batch shell gets it
    options += request.sbatch_args
    return [f"#SBATCH {option}" for option in options]


def _preamble(command: SweepCommand, written: datetime) -> str:
    return f"""\
#
# Sweep {command.name} on Ray across this allocation, written by `python -m sweeps.slurm submit`
# on {written:%Y-%m-%d %H:%M} UTC. Submitting this file again with sbatch continues the sweep:
# models and pairs with records are skipped.

set -uo pipefail
"""


def _environment(request: JobRequest, command: SweepCommand, place: ScriptPlace) -> str:
    setup = "".join(f"{line}\n" for line in request.setup)
    return f"""
# The environment: the --setup lines, then the Python (and ray) that ran submit.
{setup}export PATH={shlex.quote(place.python_bin)}:"$PATH"

sweep=({shlex.join(command.argv)})
script={shlex.quote(place.script)}  # this file, kept beside the jobs' output files
"""


def _ray_settings(request: JobRequest) -> str:
    cpus = request.cpus_per_node or '"$SLURM_CPUS_ON_NODE"'
    gpus = f" --gpus-per-task={request.gpus_per_node}" if request.gpus_per_node else ""
    return f"""
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
cpus={cpus}
# One task per node holding the node's CPUs and GPUs: Ray sees what Slurm allocated.
step=(--ntasks-per-node=1 --cpus-per-task="$cpus"{gpus})
head_ip=$(srun --nodes=1 --ntasks=1 -w "${{nodes[0]}}" hostname --ip-address |
    tr ' ' '\\n' | grep -m 1 -E '^[0-9.]+$')  # its first IPv4 address
port=$(( {FIRST_PORT} + SLURM_JOB_ID % {PORT_BLOCKS} * 1000 ))
address=$head_ip:$port
ray_args=(--num-cpus="$cpus" --num-gpus={request.gpus_per_node} --include-dashboard=false --disable-usage-stats
    --node-manager-port=$((port + 1)) --object-manager-port=$((port + 2)) --dashboard-port=$((port + 3))
    --dashboard-agent-grpc-port=$((port + 4)) --dashboard-agent-listen-port=$((port + 5))
    --metrics-export-port=$((port + 6)) --runtime-env-agent-port=$((port + 7))
    --min-worker-port=$((port + 100)) --max-worker-port=$((port + 999)))
echo "job $SLURM_JOB_ID: Ray at $address on ${{#nodes[@]}} node(s): ${{nodes[*]}}"
echo "job $SLURM_JOB_ID: ${{sweep[*]}} --address $address"
"""


def _resubmission(request: JobRequest) -> str:
    if not request.resubmit:
        return ""
    return f"""
# Slurm sends USR1 {RESUBMIT_WARNING_S} s before the time limit (--signal above): queue this file again
# now, to start when this job ends, at most {request.max_resubmits} times. The sweep runs on until the
# limit; a next job that finds the grid complete is cancelled below.
round=${{LANDSCAPE_SLURM_ROUND:-1}}
next_job=
queue_next_job() {{
    if [ -n "$next_job" ] || [ "$round" -gt {request.max_resubmits} ]; then return; fi
    next_job=$(sbatch --parsable --dependency="afterany:$SLURM_JOB_ID" \\
        --export="ALL,LANDSCAPE_SLURM_ROUND=$((round + 1))" "$script") || next_job=
    next_job=${{next_job%%;*}}
    echo "job $SLURM_JOB_ID: time limit near, queued job ${{next_job:-(failed)}} to continue the sweep"
}}
trap queue_next_job USR1
"""


def _symmetric(request: JobRequest) -> str:
    return f"""
# symmetric-run starts Ray on every node, runs the sweep on the head and stops Ray. It
# exits 0 even when Ray does not start, so the sweep leaves its exit status in a file.
export SWEEP_STATUS_FILE="${{script%/*}}/sweep-$SLURM_JOB_ID.status"
rm -f "$SWEEP_STATUS_FILE"
srun --nodes={request.nodes} "${{step[@]}}" ray symmetric-run --address "$address" --min-nodes {request.nodes} \\
    "${{ray_args[@]}}" -- bash -c '"$@"; echo $? > "$SWEEP_STATUS_FILE"' sweep "${{sweep[@]}}" --address "$address" &
sweep_pid=$!
"""


def _explicit() -> str:
    return f"""
# The head's Ray first, then one Ray per other node. Each `ray start --block` stops its node's
# Ray on SIGTERM, at once (with the sweep over there is nothing to drain).
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
stop_ray() {{  # SIGTERM to the tasks of every step but this script's (srun itself would kill them)
    scancel --signal=TERM "$SLURM_JOB_ID"
    wait "${{ray_steps[@]}}"
}}
srun --nodes=1 "${{step[@]}}" -w "${{nodes[0]}}" \\
    ray start --head --block --node-ip-address="$head_ip" --port="$port" "${{ray_args[@]}}" &
ray_steps=($!)
for (( waited = 0; waited < {HEAD_WAIT_S}; waited += 2 )); do
    ray health-check --address "$address" 2>/dev/null && break
    sleep 2
done
if ! ray health-check --address "$address" 2>/dev/null; then
    echo "job $SLURM_JOB_ID: Ray did not start on ${{nodes[0]}} within {HEAD_WAIT_S} s" >&2
    stop_ray
    exit 1
fi
for node in "${{nodes[@]:1}}"; do
    srun --nodes=1 "${{step[@]}}" -w "$node" ray start --address="$address" --block "${{ray_args[@]}}" &
    ray_steps+=($!)
done
"${{sweep[@]}}" --address "$address" &
sweep_pid=$!
"""


def _finish(request: JobRequest, command: SweepCommand) -> str:
    if request.launcher == "symmetric":
        status = """rc=$(cat "$SWEEP_STATUS_FILE" 2>/dev/null || echo 1)  # no file: the sweep never ran
rm -f "$SWEEP_STATUS_FILE"
"""
    else:
        status = """wait "$sweep_pid"; rc=$?
stop_ray
"""
    cancel_next = """if [ "$rc" -eq 0 ] && [ -n "$next_job" ]; then
    scancel "$next_job" && echo "job $SLURM_JOB_ID: the sweep is complete, cancelled job $next_job"
fi
""" if request.resubmit else ""
    return f"""
# wait returns early when a trapped signal arrives; wait until the sweep has ended.
while kill -0 "$sweep_pid" 2>/dev/null; do wait "$sweep_pid"; done
{status}{cancel_next}echo "job $SLURM_JOB_ID: sweep exited with status $rc; progress: python -m analysis status \
{shlex.quote(command.folder)}"
exit "$rc"
"""


def render(request: JobRequest, command: SweepCommand, place: ScriptPlace, written: datetime) -> str:
    """The whole sbatch script."""
    header = "".join(f"{line}\n" for line in ["#!/bin/bash", *_directives(request, command, place)])
    launch = _symmetric(request) if request.launcher == "symmetric" else _explicit()
    return "".join([header, _preamble(command, written), _environment(request, command, place),
                    _ray_settings(request), _resubmission(request), launch, _finish(request, command)])
