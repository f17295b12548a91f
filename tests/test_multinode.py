"""A real two-node Ray cluster on this host: a sweep's trials run on both nodes and land
in one shared storage folder.

The four models train as two packs of two (`--pack 2`), one job per node.
The cluster (`ray.cluster_utils.Cluster`: a head and a second node, each its own raylet)
lives in a subprocess, because the test session already owns a Ray runtime in this
process. The sweep connects to it through the CLI's `--address`, as on a real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from analysis import load_sweep

CLUSTER_SCRIPT = """
import json, sys
from ray.cluster_utils import Cluster
from sweeps.run.cli import main

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    code = main("taxonomy", "", ["--address", cluster.address, "--storage", {storage!r}, "--name", "two",
                                 "--set", "width=2", "--set", "seed=0,1,2,3", "--set", "epochs=2",
                                 "--set", "milestones=1", "--set", "batch_size=128", "--pack", "2"])
    import ray
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print("NODES " + json.dumps(nodes), flush=True)
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
sys.exit(code)
"""


def test_trials_run_on_both_nodes_with_shared_storage(tmp_path):
    storage = tmp_path / "shared"
    script = textwrap.dedent(CLUSTER_SCRIPT.format(storage=str(storage)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    nodes = json.loads(done.stdout.split("NODES ", 1)[1].splitlines()[0])
    assert len(nodes) == 2

    trials = load_sweep(str(storage / "two")).trials
    assert len(trials) == 4 and set(trials["status"]) == {"ok"}
    assert set(trials["node_id"]) == set(nodes), "every node trained at least one model"
    history = load_sweep(str(storage / "two")).history
    assert len(history) == 4 * 2, "every node's records reached the one storage folder"
