"""Benchmarks: this service against the baselines in :mod:`bench.peers`."""
