"""Every shipped cluster file passes the installed Ray's autoscaler schema, offline."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from sweeps.preflight.cluster import ClusterConfigError, validate_cluster_config, validate_cluster_file

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILES = sorted(ROOT.glob("cluster*.yaml"))
SECRET_WORDS = ("aws_access_key_id", "aws_secret_access_key", "secret_key", "private_key", "password",
                "token")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_cluster_files_are_shipped():
    assert {p.name for p in CLUSTER_FILES} >= {"cluster.yaml", "cluster-gcp.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_passes_ray_schema(path: Path):
    prepared = validate_cluster_file(path)
    gpu_types = {name: t for name, t in prepared["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu_types, "the cluster offers GPU workers"
    assert all(t["min_workers"] == 0 for t in gpu_types.values()), "GPU workers autoscale from zero"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert not head["resources"].get("GPU") and head["max_workers"] == 0


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_spot_first_with_on_demand_fallback(path: Path):
    types = load(path)["available_node_types"]
    spot = [t for t in types.values() if _is_spot(t["node_config"])]
    on_demand = [t for t in types.values() if t["resources"].get("GPU") and not _is_spot(t["node_config"])]
    assert spot and on_demand
    # Same resources, so the autoscaler's tie-break on priority picks spot first.
    assert spot[0]["resources"] == on_demand[0]["resources"]
    assert spot[0]["priority"] > on_demand[0]["priority"]


def _is_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    gcp = node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"
    return aws or gcp


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_dashboard_stays_private_and_versions_are_pinned(path: Path):
    config = load(path)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    setup = " ".join(config["setup_commands"])
    assert f'"ray[default]=={ray.__version__}"' in setup, "nodes run the Ray version this file was checked with"
    assert "pip install --quiet -e ~/landscape-sweeps" in setup, "nodes install the project's pinned deps"
    assert config["file_mounts"] == {"~/landscape-sweeps": "."}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_no_credentials_in_cluster_file(path: Path):
    text = path.read_text().lower()
    assert not [w for w in SECRET_WORDS if w in text]
    assert "akia" not in text  # the prefix of every AWS access key id
    assert "auth" not in load(path) or set(load(path)["auth"]) == {"ssh_user"}


@pytest.mark.parametrize(("where", "typo"), [
    ((), "max_worker"),
    (("available_node_types", "gpu_spot"), "min_worker"),
    (("available_node_types", "gpu_spot"), "resource"),
    (("docker",), "imagee"),
])
def test_misspelt_key_fails(where: tuple[str, ...], typo: str):
    config = copy.deepcopy(load(ROOT / "cluster.yaml"))
    node = config
    for key in where:
        node = node.setdefault(key, {})
    node[typo] = 1
    with pytest.raises(ClusterConfigError, match=typo):
        validate_cluster_config(config, "cluster.yaml")


def test_unknown_head_type_fails():
    config = load(ROOT / "cluster.yaml")
    config["head_node_type"] = "haed"
    with pytest.raises(ClusterConfigError, match="head_node_type"):
        validate_cluster_config(config)


def test_validation_opens_no_network_connection():
    """An audit hook fails the process on any socket connect while files are validated."""
    script = (
        "import sys\n"
        "def deny(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo'):\n"
        "        raise RuntimeError(f'network access: {event} {args}')\n"
        "sys.addaudithook(deny)\n"
        "from sweeps.preflight.cluster import main\n"
        f"sys.exit(main({[str(p) for p in CLUSTER_FILES]!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ok") == len(CLUSTER_FILES)


def test_cli_reports_bad_file(tmp_path: Path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text((ROOT / "cluster.yaml").read_text().replace("max_workers: 16", "max_wrkers: 16", 1))
    done = subprocess.run([sys.executable, "-m", "sweeps.cluster_config", str(bad)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "max_wrkers" in done.stderr
