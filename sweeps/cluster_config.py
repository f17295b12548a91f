"""Check cluster configs offline, against Ray's own autoscaler schema.

    python -m sweeps.cluster_config cluster.yaml cluster-gcp.yaml

A command, like the study scripts beside it; the check is `sweeps.preflight.cluster`.
"""

import sys

from sweeps.preflight.cluster import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["cluster.yaml"]))
