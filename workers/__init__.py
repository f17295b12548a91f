"""What one trial does: data, model, training, metrics and the records it writes.

Importable and testable without Ray; never imports `sweeps` or `analysis`.
Importing the package itself is free (no torch): modules are imported by name.

The modules form layers; each imports only its own layer or lower ones
(`tests/test_layers.py` checks every import):

0. `errors`, `registry`, `safe_pickle`, `storage`: no project knowledge
1. `config`: sections, declared bounds, coercion, flat keys, hashing; knows no section
2. `data`, `models`, `records`, `tables`, `checkpoints`, `augment`, `fast_path`, `mc`,
   `live`: datasets and models with their option sections, the record protocol (table
   names, keys, what "done" means), what a running job tells its watchers,
   tensors-in/tensors-out helpers
3. `train`: the training loop, `Hook`, `Update`, the `train` options
4. plug-ins, each with its own option section: optimizers (`optim`, `alig`), training
   variants (`late_phase`, `swa`), per-model metrics (`metrics/`), pair metrics
   (`pair_metrics/`, on the math of `pairwise`), packed training (`packing/`)
5. `catalog`: imports every plug-in and seals the config schema
6. jobs: `runtime` (what every job sets up), `trial`, `pair_trial`, `packing.plan`,
   `packing.job`, `tune_entry` (the Ray Tune function; `--in-process` calls the same
   `run_job`)
"""
