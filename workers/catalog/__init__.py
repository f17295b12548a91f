"""Every plug-in of `workers/`, imported in one place, and the sealed config schema.

A plug-in registers itself when its module is imported: a dataset or model in
`workers.base.data` / `workers.base.models`, an optimizer or lr schedule in `workers.training.optim`
(ALI-G's options in `workers.training.alig`), a training variant (`workers.training.late_phase`,
`workers.training.swa`), a per-model metric (`workers.metrics.*`) or a pair metric
(`workers.pair_metrics.*`), each with its own option section. Importing this module
imports them all and then seals the schema (`workers.core.config.seal`), so
`TrialConfig.from_flat` knows every key. Jobs and the sweep driver take `TrialConfig`
from here; a new plug-in is one import below.
"""

from __future__ import annotations

from workers.base import data, models  # noqa: F401
from workers.core.config import TrialConfig, seal
from workers.metrics import hessian, paths, surface  # noqa: F401
from workers.pair_metrics import bezier, similarity  # noqa: F401
from workers.training import alig, late_phase, optim, swa, train  # noqa: F401

__all__ = ["TrialConfig"]

# The order of the config columns in every record, as written before plug-ins declared
# their own sections (stored sweeps and new rows line up column for column).
SECTION_ORDER = ("data", "model", "optim", "adam", "alig", "train", "late_phase", "swa", "measure",
                 "hessian", "interpolation", "surface", "pairs")

seal(SECTION_ORDER)
