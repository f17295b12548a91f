"""Layer 5, the jobs a worker runs: a trial, a seed pair, a pack, and the Tune entry
that runs any of them (`--in-process` runs the same `run_job`)."""
