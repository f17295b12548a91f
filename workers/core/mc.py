"""The mode-connectivity summary of a curve (Yang et al. 2021), without torch.

Kept apart from `workers.pair_metrics.pairwise` so that `analysis` (which must not import torch)
computes mc from published curves with the very same formula as the pair trials.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mode_connectivity(values: Sequence[float]) -> float:
    """mc from a curve's values at increasing t (end points first and last):
    u = argmax_t |v(t) - (v(0)+v(1))/2|, mc = (v(0)+v(1))/2 - v(u).

    On training error (percentage points): mc < 0 is a barrier (poorly connected),
    mc > 0 a curve better than its end points (typical of under-trained models),
    mc ~ 0 well connected. The argmax runs over every evaluated t, end points
    included, as in the paper. NaN if any value is not finite.
    """
    v = np.asarray(values, dtype=np.float64)
    assert v.ndim == 1 and len(v) >= 2, "need the curve at >= 2 points, end points included"
    if not np.all(np.isfinite(v)):
        return float("nan")
    mean_ends = 0.5 * (v[0] + v[-1])
    u = int(np.argmax(np.abs(v - mean_ends)))
    return float(mean_ends - v[u])


def curve_summary(points: list[dict]) -> dict[str, float]:
    """mc on training error (`mc`), training loss (`mc_loss`) and test error (`mc_test`)
    from curve rows with keys t, split ("train"/"test"), loss, err (points)."""
    by_split = {s: sorted((p for p in points if p["split"] == s), key=lambda p: p["t"]) for s in ("train", "test")}
    return {
        "mc": mode_connectivity([p["err"] for p in by_split["train"]]),
        "mc_loss": mode_connectivity([p["loss"] for p in by_split["train"]]),
        "mc_test": mode_connectivity([p["err"] for p in by_split["test"]]),
    }
