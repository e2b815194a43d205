"""CPU time of OS processes, from /proc/<pid>/stat (Linux), for benchmarks that start processes.

`cpu_seconds(pid)` is user + system time of every thread of the process, plus (by default) that of
its live descendants and the children it has already reaped (`cutime`/`cstime`), so a process
tree's total only grows. `CpuMeter` snapshots named groups of PIDs; the difference of two
snapshots divided by the work done in between is the CPU cost per unit of work.

Read both snapshots while the processes are alive: the time of a process that has exited and been
reaped is gone with it (`ProcessLookupError`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["cpu_seconds", "CpuMeter", "CpuSnapshot", "TICKS"]

TICKS = os.sysconf("SC_CLK_TCK")  # clock ticks per second, the unit of /proc/<pid>/stat times


@dataclass(frozen=True)
class _Stat:
    ppid: int
    own: int  # utime + stime, ticks
    reaped: int  # cutime + cstime: children waited for, ticks


def _read_stat(pid: int) -> _Stat:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessLookupError(f"no process {pid}") from exc
    # "pid (comm) state ppid ..." : comm may hold spaces and parentheses, so split at the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): ppid 4, utime 14, stime 15, cutime 16, cstime 17.
    return _Stat(
        ppid=int(fields[1]), own=int(fields[11]) + int(fields[12]), reaped=int(fields[13]) + int(fields[14])
    )


def _children() -> dict[int, list[int]]:
    """ppid -> child PIDs of every process visible now."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = _read_stat(int(entry.name))
        except (ProcessLookupError, OSError, ValueError):
            continue  # exited while we looked
        tree.setdefault(stat.ppid, []).append(int(entry.name))
    return tree


def _tree_ticks(pid: int, children: Mapping[int, list[int]] | None) -> int:
    root = _read_stat(pid)
    if children is None:
        return root.own
    total = root.own + root.reaped
    stack = list(children.get(pid, ()))
    seen = {pid}
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        try:
            stat = _read_stat(child)
        except ProcessLookupError:
            continue  # exited since the walk: its time moves to its parent's cutime once reaped
        total += stat.own + stat.reaped
        stack.extend(children.get(child, ()))
    return total


def cpu_seconds(pid: int, include_children_tree: bool = True) -> float:
    """User + system CPU seconds of `pid` (all its threads) and, by default, of its descendants.

    With descendants: the live ones (found by walking /proc by ppid) plus those already reaped
    (cutime + cstime of each process in the tree). Without: the process's own threads only.
    Raises ProcessLookupError when `pid` does not exist (or is gone).
    """
    return _tree_ticks(pid, _children() if include_children_tree else None) / TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds per group name at one instant (`wall`: time.monotonic())."""

    seconds: Mapping[str, float]
    wall: float

    def __sub__(self, earlier: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            {name: value - earlier.seconds.get(name, 0.0) for name, value in self.seconds.items()},
            self.wall - earlier.wall,
        )

    def total(self, names: Iterable[str]) -> float:
        return sum(self.seconds[name] for name in names)


class CpuMeter:
    """Snapshots the CPU time of named groups of processes: name -> PIDs (each with its descendants).

    Groups named in `own_only` count the listed processes' own threads only: use it for the
    current process, whose descendants are the processes measured in the other groups.
    """

    def __init__(self, groups: Mapping[str, Iterable[int]], *, own_only: Iterable[str] = ()) -> None:
        self.groups = {name: tuple(pids) for name, pids in groups.items()}
        self.own_only = frozenset(own_only)
        unknown = self.own_only - self.groups.keys()
        if unknown:
            raise ValueError(f"own_only names unknown groups: {sorted(unknown)}")

    def snapshot(self) -> CpuSnapshot:
        children = _children()  # one walk of /proc for every group
        wall = time.monotonic()
        seconds = {
            name: sum(_tree_ticks(pid, None if name in self.own_only else children) for pid in pids) / TICKS
            for name, pids in self.groups.items()
        }
        return CpuSnapshot(seconds, wall)
