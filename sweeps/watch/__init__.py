"""Watching a sweep as it runs: the terminal's lines and progress, and the trackers of
`--log` (one run per model)."""
