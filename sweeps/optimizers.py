"""Training variants compared: SGD vs Adam vs ALI-G, alone, with late-phase weights, with
SWA and with both, over a small width x batch-size grid.

    python sweeps/optimizers.py                         # offline demo on scikit-learn digits
    python sweeps/optimizers.py --preset paper --dry-run
    python sweeps/optimizers.py --set optimizer=sgd,alig --set late_phase.k=0,10
    python -m analysis study-report results/optimizers-demo
"""

import sys

from sweeps.run.cli import main

if __name__ == "__main__":
    sys.exit(main("optimizers", __doc__))
