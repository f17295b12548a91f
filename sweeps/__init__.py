"""What to run: sweep specs, presets, and the driver that fans trials out with Ray Tune."""
