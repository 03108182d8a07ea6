"""Benchmarks that reproduce the paper's figures on small public data."""
