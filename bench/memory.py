"""`memory`: resident memory of the PM with N completed processes in its store.

The journal of N finished processes is generated without a PM (bench/scenario.py: an
e-mail the rules cannot answer, classified `other`, escalated: 2 entries per process,
terminal). A PM process (`python -m pm run pm`) then starts on an empty state dir,
rebuilds its stores from the journal, and handles one new e-mail (the probe: proof it
is caught up and serving); its VmRSS / VmHWM are read from /proc/<pid>/status. It is
stopped and started again on the store it built (the steady state of a restart), probe,
RSS again. The figure is that steady-state RSS.

`baseline`: the RSS of the same PM, after a probe, on an empty journal.

Sizes: N = 1,000,000 processes (quick: 50,000). On this 2-core machine the full size takes
~12 minutes (generating and folding 2,000,000 entries); RESULTS.md has the figures
at 50k, 200k and 1M.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.cluster import rss_kib
from bench.common import Result, bench_broker, report
from bench.recovery import time_to_first_decision
from bench.scenario import JournalWriter, Scenario
from pm.harness import Child, JournalTail, child_env, pm_argv
from pm.store import store_root

__all__ = ["run"]


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run(quick: bool, *, processes: int | None = None) -> Result:
    n = processes or (50_000 if quick else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="pm-bench-memory-"))
    children: list[Child] = []
    with bench_broker() as config:
        env = child_env(config)
        scenario = Scenario(config, uuid.uuid4().hex[:6])
        argv = pm_argv("run", "pm")
        tail = JournalTail(config, "bench-memory-watch", decode_inputs=False)

        def measured(name: str, probe: int) -> tuple[float, int, int]:
            child = Child(name, argv, work / f"{name}.log")
            children.append(child)
            seconds = time_to_first_decision(config, env, child, tail, scenario, probe)
            time.sleep(1.0)  # let the post-batch store write settle
            rss, hwm = rss_kib(child.pid)
            child.stop()
            return seconds, rss, hwm

        try:
            _s, cold_rss, _h = measured("pm-empty", -1)
            shutil.rmtree(store_root(config), ignore_errors=True)
            started = time.perf_counter()
            written = JournalWriter(config, scenario).write(n, "other")
            generated = time.perf_counter() - started
            # The probes of the empty run are in the journal too: the fold below includes them.
            rebuild_s, rebuilt_rss, rebuilt_hwm = measured("pm-rebuild", -2)
            store_mib = _du_mib(store_root(config))
            restart_s, rss, hwm = measured("pm-restart", -3)
        finally:
            for child in children:
                child.stop()
            tail.close()
    shutil.rmtree(work, ignore_errors=True)
    mib = rss / 1024
    result = Result(
        "memory",
        mib,
        "MiB",
        baseline=cold_rss / 1024,
        extra={
            "processes": n,
            "journal_entries": written,
            "rss_after_rebuild_mib": round(rebuilt_rss / 1024, 1),
            "hwm_during_rebuild_mib": round(rebuilt_hwm / 1024, 1),
            "store_mib": round(store_mib, 1),
        },
    )
    report(
        [
            ("completed processes", f"{n:,} ({written:,} journal entries, generated in {generated:.0f}s)"),
            ("PM on an empty journal (baseline)", f"{cold_rss / 1024:.1f} MiB RSS"),
            (
                "after rebuilding the store",
                f"{rebuilt_rss / 1024:.1f} MiB RSS, peak {rebuilt_hwm / 1024:.1f} MiB ({rebuild_s:.1f}s to serve)",
            ),
            ("store on disk", f"{store_mib:.1f} MiB"),
            (
                "restart on that store",
                f"{mib:.1f} MiB RSS, peak {hwm / 1024:.1f} MiB ({restart_s:.1f}s to serve)",
            ),
            ("ratio to empty", f"{result.ratio}"),
        ],
        result,
    )
    return result
