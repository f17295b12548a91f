"""What one trial does: data, model, training, metrics and the records it writes.

Importable and testable without Ray; never imports `sweeps` or `analysis`.
Importing the package itself is free (no torch): modules are imported by name.
"""
