"""Checks before anything runs: whether the resources exist, whether a model fits in
memory, what the sweep will cost, each trial's GPU share, cluster configs."""
