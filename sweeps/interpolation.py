"""Linear interpolation from theta_0 to theta_T (Vlaar & Frankle 2022): initial-weight
scale x optimizer x BatchNorm on/off x label noise, full and layer-wise paths.

    python sweeps/interpolation.py                      # offline demo on scikit-learn digits
    python sweeps/interpolation.py --preset paper --dry-run
    python sweeps/interpolation.py --set init_from=pretrained.pt --set init_scale=1
    python -m analysis study-report results/interpolation-demo
"""

import sys

from sweeps.run.cli import main

if __name__ == "__main__":
    sys.exit(main("interpolation", __doc__))
