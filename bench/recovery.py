"""`recovery`: kill -9 the PM with N processes in flight; seconds until it handles new input again.

The PM runs as its own OS process (`python -m pm run pm --max-active ...`). N e-mails are
pre-loaded; once all N are journaled (each process waits for its classification: in
flight), the PM gets SIGKILL. Then, for each case, a new PM process starts and at the
same moment one new e-mail is published; the figure is the time from the restart to the
probe's journal record (process start, imports, transactional fencing of the dead
instance, group join, store open + catch-up, the probe's batch):

- store present, group join: the RocksDB stores left by the killed PM (catch-up from their
  anchors), the PM joining its consumer group as the same static member (`group.instance.id`);
- store present, `--partitions all` (the figure): the same with static partitions, no group
  join. Apache Kafka hands a returning static member its partitions without a rebalance; Tansu
  holds JoinGroup and SyncGroup ~3 s each even then, which static partitions avoid;
- store deleted: the state dir removed after another kill -9 (rebuild from journal start).

`baseline`: the same measure for a cold start on an empty journal with `--partitions all` (what
any restart costs).

Sizes: N = 10,000 processes in flight (quick: 2,000).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result, bench_broker, report
from bench.scenario import Scenario, produce_all
from customer_email.publisher import EmailPublisher
from pm.config import Config
from pm.harness import Child, JournalTail, child_env, pm_argv
from pm.store import store_root

__all__ = ["run", "time_to_first_decision"]


def _wait_journaled(tail: JournalTail, child: Child, wanted: set[str], timeout: float) -> float:
    """Poll the journal until every correlation ID in `wanted` has an entry; returns time.monotonic()."""
    missing = set(wanted)
    deadline = time.monotonic() + timeout
    while missing:
        for row in tail.poll(0.05):
            missing.discard(row.correlation_id)
        if missing and not child.alive():
            raise RuntimeError(f"the PM exited:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} inputs not journaled within {timeout:.0f}s:\n{child.tail()}")
    return time.monotonic()


def time_to_first_decision(
    config: Config, env: dict[str, str], child: Child, tail: JournalTail, scenario: Scenario, probe: int
) -> float:
    """Start `child` and publish one new e-mail at once; seconds until its journal entry shows up."""
    started = time.monotonic()
    child.start(env)
    email = scenario.email(probe)
    with EmailPublisher(config) as publisher:
        publisher.publish(email.payload)
    return _wait_journaled(tail, child, {email.correlation_id}, 600) - started


def run(quick: bool, *, processes: int | None = None) -> Result:
    n = processes or (2_000 if quick else 10_000)
    work = Path(tempfile.mkdtemp(prefix="pm-bench-recovery-"))
    with bench_broker() as config:
        env = child_env(config)
        static_env = {**env, "PM_PARTITIONS": "all"}
        scenario = Scenario(config, uuid.uuid4().hex[:6])
        argv = pm_argv("run", "pm", "--max-active", str(n * 2 + 10))
        tail = JournalTail(config, "bench-recovery-watch", decode_inputs=False)
        children: list[Child] = []

        def pm_child(name: str) -> Child:
            child = Child(name, argv, work / f"{name}.log")
            children.append(child)
            return child

        try:
            cold = time_to_first_decision(config, static_env, pm_child("pm-cold"), tail, scenario, -1)
            children[-1].stop()
            emails = [scenario.email(i) for i in range(n)]
            produce_all(config, list(emails))
            loaded = pm_child("pm-load")
            loaded.start(env)
            _wait_journaled(tail, loaded, {e.correlation_id for e in emails}, 900)
            loaded.stop(signal.SIGKILL)
            # The same restart with static partitions (`--partitions all`): no group join at all. Each
            # instance is killed idle, so no open transaction of one transactional.id holds the other back.
            grouped = time_to_first_decision(config, env, pm_child("pm-store"), tail, scenario, -2)
            children[-1].stop(signal.SIGKILL)
            present = time_to_first_decision(config, static_env, pm_child("pm-store-static"), tail, scenario, -4)
            children[-1].stop(signal.SIGKILL)
            shutil.rmtree(store_root(config))
            deleted = time_to_first_decision(config, static_env, pm_child("pm-nostore"), tail, scenario, -3)
            children[-1].stop()
            rebuilt = [
                line
                for line in (work / "pm-nostore.log").read_text().splitlines()
                if "rebuilt partition" in line
            ]
        finally:
            for child in children:
                child.stop(signal.SIGKILL)
            tail.close()
    shutil.rmtree(work, ignore_errors=True)
    result = Result(
        "recovery",
        present,
        "s",
        baseline=cold,
        extra={
            "processes_in_flight": n,
            "store_deleted_s": round(deleted, 2),
            "store_present_group_join_s": round(grouped, 2),
        },
    )
    report(
        [
            ("processes in flight", f"{n:,}"),
            ("cold start, empty journal, --partitions all (baseline)", f"{cold:.2f} s"),
            ("after kill -9, store present, group join", f"{grouped:.2f} s (static member, range assignor)"),
            ("after kill -9, store present, --partitions all", f"{present:.2f} s (the figure)"),
            (
                "after kill -9, store deleted, --partitions all",
                f"{deleted:.2f} s ({len(rebuilt)} partitions rebuilt)",
            ),
            ("ratio to cold start", f"{result.ratio}"),
        ],
        result,
    )
    return result
