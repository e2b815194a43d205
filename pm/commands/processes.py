"""`pm processes [--status S] [--stuck] [--json]`: the processes in this instance's stores, with their status.

Reads the RocksDB stores under `state_dir` read-only, so it works while the PM
runs. `--json` prints a JSON array of objects with at least `correlation_id`
and `status` (a stable contract).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pm.config import Config
from pm.process import Status
from pm.store import PartitionStore, list_store_paths, store_root

__all__ = ["register", "list_processes", "print_rows"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub = subparsers.add_parser(
        "processes", parents=[common], help="list processes (correlation ID and status) from the local stores"
    )
    sub.add_argument(
        "--status", default=None, help="only this status (running, waiting_for_approval, or an outcome)"
    )
    sub.add_argument(
        "--stuck",
        action="store_true",
        help="only running processes with no live timer (nothing will move them on): resume or escalate them",
    )
    sub.add_argument("--json", action="store_true", help="print a JSON array of objects")
    sub.set_defaults(handler=_processes)


def list_processes(config: Config, status: str | None = None, *, stuck: bool = False) -> list[dict[str, Any]]:
    """One object per process in the stores under `config.state_dir`, sorted by correlation ID.

    `stuck`: only processes the watchdog reports (running, no live timer; `pm.fold.stuck`).
    """
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
                    "timers": len(data.get("timers", {})),
                    "parked": len((data.get("quarantine") or {}).get("parked", [])),
                }
                row["stuck"] = row["status"] == Status.RUNNING and row["timers"] == 0
                if (status is None or row["status"] == status) and (row["stuck"] or not stuck):
                    rows.append(row)
        finally:
            store.close()
    rows.sort(key=lambda r: str(r["correlation_id"]))
    return rows


def _processes(args: argparse.Namespace, config: Config) -> int:
    rows = list_processes(config, args.status, stuck=args.stuck)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_rows(config, rows)
    return 0


def print_rows(config: Config, rows: list[dict[str, Any]]) -> None:
    if not rows:
        print(f"no such processes in {store_root(config)}")
        return
    width = max(len(r["correlation_id"]) for r in rows)
    for row in rows:
        notes = [
            *(["stuck: resume or escalate it"] if row.get("stuck") else []),
            *([f"{row['parked']} parked"] if row.get("parked") else []),
            *([str(row["reason"])] if row.get("reason") else []),
        ]
        shown = f"  {'; '.join(notes)}" if notes else ""
        print(
            f"{row['correlation_id']:<{width}}  {row['status']:<20}  {row['process']} v{row['version']}{shown}"
        )
