"""`pm processes [--status S] [--json]`: the processes in this instance's stores, with their status.

Reads the RocksDB stores under `state_dir` read-only, so it works while the PM
runs. `--json` prints a JSON array of objects with at least `correlation_id`
and `status` (a stable contract).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pm.config import Config
from pm.store import PartitionStore, list_store_paths, store_root

__all__ = ["register", "list_processes"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub = subparsers.add_parser(
        "processes", parents=[common], help="list processes (correlation ID and status) from the local stores"
    )
    sub.add_argument("--status", default=None, help="only this status (running, waiting_for_approval, or an outcome)")
    sub.add_argument("--json", action="store_true", help="print a JSON array of objects")
    sub.set_defaults(handler=_processes)


def list_processes(config: Config, status: str | None = None) -> list[dict[str, Any]]:
    """One object per process in the stores under `config.state_dir`, sorted by correlation ID."""
    rows: list[dict[str, Any]] = []
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition, read_only=True)
        try:
            for correlation_id, data in store.records():
                row = {
                    "correlation_id": correlation_id,
                    "status": data.get("status") or data.get("state", {}).get("status"),
                    "process": data.get("process"),
                    "version": data.get("version"),
                    "partition": partition,
                    "journal_offset": data.get("journal_offset"),
                    "reason": data.get("state", {}).get("reason"),
                }
                if status is None or row["status"] == status:
                    rows.append(row)
        finally:
            store.close()
    rows.sort(key=lambda r: str(r["correlation_id"]))
    return rows


def _processes(args: argparse.Namespace, config: Config) -> int:
    rows = list_processes(config, args.status)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no processes in {store_root(config)}")
        return 0
    width = max(len(r["correlation_id"]) for r in rows)
    for row in rows:
        reason = f"  {row['reason']}" if row.get("reason") else ""
        print(
            f"{row['correlation_id']:<{width}}  {row['status']:<20}  {row['process']} v{row['version']}{reason}"
        )
    return 0
