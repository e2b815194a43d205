"""Benchmarks, run as `pm bench NAME [--quick]`. Each prints a table and, last, one JSON line."""

BENCHMARKS = {
    "pipe": "bench.pipe",
    "pm-throughput": "bench.pm_throughput",
}

__all__ = ["BENCHMARKS"]
