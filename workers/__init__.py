"""What one trial does: data, model, training, metrics and the records it writes.

Importable and testable without Ray; never imports `sweeps` or `analysis`.
Importing the package itself is free (no torch): modules are imported by name.

Its folders are its layers, bottom to top (`LAYERS`); a module imports only from its
own layer or lower ones (`tests/test_layers.py` reads the layers from the folders and
checks every import):

- `core/`: the torch-free protocol `analysis` reads with: errors, registries, storage,
  the config machinery, the record protocol, consolidated tables, lineage, seals
- `base/`: datasets and models with their option sections, checkpoints, footprints
- `training/`: the loop and its hooks, optimizers, late-phase weights, SWA,
  augmentation, the fast path
- `metrics/`, `pair_metrics/`, `packing/`: the per-model and per-pair metrics and
  packed training, each plug-in one file with its options and declarations
- `catalog/`: imports every plug-in and seals the config schema (`TrialConfig`)
- `jobs/`: what a worker runs: a trial, a seed pair, a pack, the Ray Tune entry
"""

LAYERS = (("core",), ("base",), ("training",), ("metrics", "pair_metrics", "packing"), ("catalog",), ("jobs",))
