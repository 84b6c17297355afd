"""Benchmark pieces used by `reaemb bench` (reaemb_ray/stages/bench.py)."""
