"""Benchmarks: each module writes its results to docs/ (see the README)."""
