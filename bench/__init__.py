"""Benchmarks, run as `pm bench NAME [--quick]`. Each prints a table and, last, one JSON line."""

BENCHMARKS = {
    "pipe": "bench.pipe",
    "pm-throughput": "bench.pm_throughput",
    "chaos": "bench.chaos",
    "e2e": "bench.e2e",
    "rebuild": "bench.rebuild",
    "recovery": "bench.recovery",
    "memory": "bench.memory",
    "poison": "bench.poison",
}

__all__ = ["BENCHMARKS"]
