"""Layer 1, what every torch job builds on: datasets, models, checkpoints, and a model's
footprint from one pass on the meta device."""
