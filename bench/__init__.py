"""Benchmarks: each prints its figures and the baseline it beats (bench/README.md)."""
