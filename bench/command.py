"""`pm bench NAME [--quick]`: the benchmarks in bench/ (a table, then one JSON line).

Registered with `pm` as a plugin (entry point group `pm.commands` in pyproject.toml): the core
does not import the benchmarks.
"""

from __future__ import annotations

import argparse
import importlib

from pm.collector import quiet_collector
from pm.config import Config
from pm.errors import PmError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = subparsers.add_parser("bench", parents=[common], help="run a benchmark on its own local broker")
    bench.add_argument("name", help="pipe, pm-throughput, ... (see bench/__init__.py)")
    bench.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace, config: Config) -> int:
    from bench import BENCHMARKS

    if args.name not in BENCHMARKS:
        raise PmError(f"unknown benchmark {args.name!r}; known: {', '.join(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[args.name])
    # The benchmarks that run the PM in this process (pm-throughput, rebuild, memory) run it with the
    # collector settings `pm run pm` gives it.
    quiet_collector()
    module.run(args.quick)
    return 0
