"""Benchmark scripts: ``python -m bench.<name>`` from the repository root (see README)."""
