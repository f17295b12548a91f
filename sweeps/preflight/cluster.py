"""Check a Ray cluster file offline against the installed Ray's own autoscaler schema.

    python -m sweeps.cluster_config cluster.yaml cluster-gcp.yaml

`ray up` validates the same way, but only after it has contacted the cloud. This runs
the two offline steps of that path: `prepare_config` (merges the provider's bundled
defaults.yaml, fills per-type worker limits; reads local files only, no cloud API) and
`validate_config` (JSON-schema check, which rejects unknown keys such as a misspelt
`max_worker`). Both are private Ray APIs, so they are wrapped here once and Ray is
pinned in pyproject.toml; a Ray upgrade that moves them breaks only this module's test.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


class ClusterConfigError(ValueError):
    """A cluster file that Ray's autoscaler would reject."""


def validate_cluster_config(config: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """The config as `ray up` would use it (defaults merged); raises ClusterConfigError."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(config)
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise ClusterConfigError(f"{source}: {where}: {exc.message}") from None
    except (ValueError, KeyError, NotImplementedError, AssertionError) as exc:
        raise ClusterConfigError(f"{source}: {exc}") from None
    return prepared


def validate_cluster_file(path: str | Path) -> dict[str, Any]:
    """Load a cluster YAML file and validate it (see `validate_cluster_config`)."""
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: expected a mapping at the top level")
    return validate_cluster_config(config, str(path))


def main(paths: list[str]) -> int:
    status = 0
    for path in paths:
        try:
            validate_cluster_file(path)
            print(f"{path}: ok")
        except (ClusterConfigError, OSError, yaml.YAMLError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    return status

