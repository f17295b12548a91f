"""Run a sweep on a Slurm cluster: `python -m sweeps.slurm submit [options] -- SWEEP COMMAND`.

One batch job starts Ray on every node of its allocation, runs the unchanged sweep
command against that Ray (`--address`) and stops Ray. Resuming is the sweep's own:
records are the source of truth, so the same job submitted again runs only what is
missing (`--resubmit` queues it before the time limit).

- `command`: the sweep command, validated by the study's own CLI before anything is queued
- `storage`: whether the sweep folder can be seen from every node
- `request`: what the job asks of Slurm, and the checks between it and the sweep
- `script`: the sbatch script
- `queue`: the calls to Slurm's commands (`sinfo`, `sbatch`)
- `__main__`: the command line

The guide for a lab cluster is docs/slurm.md.
"""
