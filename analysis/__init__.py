"""Everything after a sweep: loading records, aggregating seeds, phases, plots, reports.

Light by design: importing `analysis` pulls in neither torch nor ray, so reading a
sweep's results is fast on a laptop.
"""

from analysis.load import Sweep, load_sweep

__all__ = ["Sweep", "load_sweep"]
