"""The project's speed benchmark, `python -m benchmarks.bench` (not part of the labkit package)."""
