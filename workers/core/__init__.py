"""Layer 0, the torch-free protocol: errors, registries, storage, the config machinery,
the record protocol (tables, keys, what "done" means), consolidated tables, lineage,
checkpoint seals and what a running job tells its watchers. `analysis` imports only
this layer of `workers`, so reading a sweep never imports torch."""
