"""A rebuild takes each process's last recorded record (`JournalEntry.payload.record`) instead of re-deciding.

Entries without a record (written before schema version 3, a quarantined process, a record too large
to carry) are re-decided as before; any mix of both, across fold windows, gives the store an
all-re-decided fold gives. The journals are written the way the PM writes them (bench/scenario.py:
the real `decide`, `advance`, `build_entry`).
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_runtime_support import publish

from bench.scenario import JournalWriter, Scenario
from customer_email import CUSTOMER_EMAIL
from pm.codec import decode, encode
from pm.config import Config
from pm.events import Event, JournalEntry
from pm.journal import JOURNAL_TOPIC
from pm.kafka import make_producer
from pm.process import ProcessDefinition
from pm.runtime import ProcessManager, recovery
from pm.store import PartitionStore, list_store_paths
from pm.topics import apply_topics

KINDS = ("status", "refund", "other")  # sent, waiting for approval (a reminder timer pending), escalated


class _CannotDecide:
    """CUSTOMER_EMAIL whose `decide` fails: what a rebuild makes of inputs today's code would not decide."""

    def __init__(self, inner: ProcessDefinition[Any]) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def decide(self, state: Any, event: Event, now: datetime) -> Any:
        raise RuntimeError("decide ran during the rebuild")


def _journal(config: Config, processes: int, keep_record: Any) -> None:
    """Write the journals of `processes` processes, interleaved; `keep_record(n, total)`: the n-th entry keeps its record."""
    writer = JournalWriter(config, Scenario(config, "r"))
    per_process = [list(writer.entries(i, KINDS[i % len(KINDS)])) for i in range(processes)]
    producer = make_producer(config, "test-journal")
    for n, entries in enumerate(itertools.zip_longest(*per_process)):
        for i, item in enumerate(entries):
            if item is None:
                continue
            partition, value, cid = item
            if not keep_record(n, len(per_process[i])):
                entry = decode(value)
                assert isinstance(entry, JournalEntry) and entry.payload.record is not None
                value = encode(entry.model_copy(update={"payload": entry.payload.model_copy(update={"record": None})}))
            producer.produce(config.topic(JOURNAL_TOPIC), value, key=cid.encode(), partition=partition)
    assert producer.flush(30) == 0


def _rebuilt(config: Config, state_dir: Path, definitions: list[Any] | None = None) -> dict[str, Any]:
    """Start a PM on an empty state dir (static partitions: no group join), let it fold, read its stores."""
    config = replace(config, state_dir=state_dir, partitions="all")
    run_rebuild(ProcessManager(config, definitions, max_active=10**9, log=io.StringIO(), catch_up_timeout=60.0))
    return stores_held(config)


def run_rebuild(manager: ProcessManager) -> None:
    """Start the PM, let it fold its stores until it is assigned, close it."""
    try:
        manager.start()  # with static partitions the stores are opened here
        deadline = time.monotonic() + 120
        while manager.assignments == 0:
            assert time.monotonic() < deadline, "the rebuild did not finish"
            manager.run_once(0.1)
    finally:
        manager.close()


def stores_held(config: Config) -> dict[str, Any]:
    """Every process record, timer (in due order) and the active count the stores under `config` hold."""
    records: dict[str, Any] = {}
    timers: list[Any] = []
    active = 0
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition, read_only=True)
        try:
            records.update(store.records())
            timers.extend(store.timers())
            active += store.active
        finally:
            store.close()
    return {
        "records": records,
        "timers": sorted(timers, key=lambda t: (t.due_ms, t.timer_id)),
        "active": active,
    }


def _prefixed(config: Config) -> Config:
    fresh = replace(config, topic_prefix=f"{config.topic_prefix}{uuid.uuid4().hex[:4]}.")
    apply_topics(fresh)
    return fresh


def test_a_rebuild_takes_the_recorded_records_and_runs_no_decide(topics: Config, tmp_path: Path) -> None:
    _journal(topics, 9, lambda n, total: True)
    rebuilt = _rebuilt(topics, tmp_path / "fast", [_CannotDecide(CUSTOMER_EMAIL)])
    statuses = sorted(r["status"] for r in rebuilt["records"].values())
    assert statuses == ["escalated"] * 3 + ["sent"] * 3 + ["waiting_for_approval"] * 3
    # The same journal without records is re-decided: that decide is what the records spare.
    bare = _prefixed(topics)
    _journal(bare, 9, lambda n, total: False)
    redecided = _rebuilt(bare, tmp_path / "bare", [_CannotDecide(CUSTOMER_EMAIL)])
    assert {r["status"] for r in redecided["records"].values()} == {"failed"}


@pytest.mark.parametrize(
    "pattern",
    ["every entry", "every other entry", "the first three of a process", "the last one of a process"],
)
def test_any_mix_of_entries_with_and_without_records_rebuilds_what_re_deciding_does(
    topics: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pattern: str
) -> None:
    keep = {
        "every entry": lambda n, total: True,
        "every other entry": lambda n, total: n % 2 == 0,
        "the first three of a process": lambda n, total: n < 3,
        "the last one of a process": lambda n, total: n == total - 1,
    }[pattern]
    # Small windows: a process's entries spread over several, its record taken mid-window or not at all.
    monkeypatch.setattr(recovery, "FOLD_WINDOW", 4)
    _journal(topics, 12, keep)
    rebuilt = _rebuilt(topics, tmp_path / "mixed")
    reference = _prefixed(topics)
    _journal(reference, 12, lambda n, total: False)
    redecided = _rebuilt(reference, tmp_path / "reference")
    assert len(rebuilt["records"]) == 12
    assert rebuilt == redecided
    # The timer index and the active count agree with the records (each window's diff is right).
    pending = sorted(
        (due, timer_id, cid)
        for cid, r in rebuilt["records"].items()
        for timer_id, (due, _name) in r["timers"].items()
    )
    assert pending and [(t.due_ms, t.timer_id, t.correlation_id) for t in rebuilt["timers"]] == pending
    assert rebuilt["active"] == sum(r["status"] == "running" for r in rebuilt["records"].values())


# A PM that rebuilds its stores, then handles inputs until it has journaled one, and waits to be killed.
REBUILD_THEN_HANDLE = """
import io, sys, time
from dataclasses import replace
from pathlib import Path
from pm.config import load_config
from pm.runtime import ProcessManager, recovery
recovery.FOLD_WINDOW = 20  # several windows
config = replace(load_config(), state_dir=Path(sys.argv[1]), partitions="all")
manager = ProcessManager(config, max_active=10**9, log=io.StringIO(), verifier=lambda e: None, catch_up_timeout=60.0)
manager.start()
while manager.assignments == 0:
    manager.run_once(0.1)
print("rebuilt", flush=True)
while manager.stats.handled == 0:
    manager.run_once(0.1)
print("handled", flush=True)
time.sleep(600)
"""


def test_a_kill_after_a_rebuild_and_a_first_input_keeps_every_rebuilt_record(
    topics: Config, tmp_path: Path
) -> None:
    """A live batch after a rebuild (its anchor past every rebuilt window) must never survive a crash
    the rebuilt records before it did not. (Session 9 tried writing the windows outside RocksDB's
    write-ahead log: this test failed unless the store was flushed before the first live write.)"""
    config = _prefixed(topics)
    JournalWriter(config, Scenario(config, "r")).write(30, "status")  # ended processes: no timer to fire
    expected = _rebuilt(config, tmp_path / "clean")["records"]
    assert len(expected) == 30
    state = tmp_path / "state"
    env = {**os.environ, "PM_BOOTSTRAP": config.bootstrap, "PM_TOPIC_PREFIX": config.topic_prefix}
    pm = subprocess.Popen(
        [sys.executable, "-c", REBUILD_THEN_HANDLE, str(state)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert pm.stdout is not None and pm.stdout.readline() == "rebuilt\n"
        new = Scenario(config, "new").email(1)
        publish(config, [new])
        assert pm.stdout.readline() == "handled\n"
    finally:
        pm.kill()
        pm.wait(30)
    after = _rebuilt(config, state)["records"]
    assert set(after) == {*expected, new.correlation_id}
    assert {cid: record for cid, record in after.items() if cid != new.correlation_id} == expected
