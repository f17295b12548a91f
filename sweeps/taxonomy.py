"""The loss-landscape taxonomy sweep (Yang et al. 2021): width x batch size x seeds.

    python sweeps/taxonomy.py                      # offline demo on scikit-learn digits
    python sweeps/taxonomy.py --preset paper --dry-run
    python sweeps/taxonomy.py --set width=2,4,8 --set label_noise=0,0.2
"""

import sys

from sweeps.run.cli import main

if __name__ == "__main__":
    sys.exit(main("taxonomy", __doc__))
