"""fh_utils benchmarks: `python -m benchmarks` (see benchmarks/run.py and docs/benchmarks.md)."""
