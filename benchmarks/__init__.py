"""Benchmarks of dynamo-launch on the test bed (see run.py and docs/benchmarks.md)."""
