"""Benchmarks: ``python -m bgkit.bench.<name>``. They print ratios measured in one run."""
