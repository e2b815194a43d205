"""Large empty stores are rebuilt side by side: worker processes fold a share of the partitions.

The stores, timers, active counts and the outputs kept for re-emission must be what the PM alone
folds; a worker that fails stops the assignment with `CatchUpError` and leaves no process behind.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_rebuild_records import _journal, run_rebuild, stores_held

from bench.scenario import JournalWriter, Scenario
from customer_email import CUSTOMER_EMAIL
from pm.config import Config
from pm.journal import JournalReader, RawJournalRecord, decode_entry
from pm.registry import Registry
from pm.runtime import ProcessManager, manager, recovery
from pm.runtime.rebuild import WorkerFolds, WorkerJob, worker_count
from pm.store import PartitionStore, store_path


def _rebuild(config: Config, state_dir: Path, workers: int) -> tuple[dict[str, Any], str]:
    """A PM (its app loaded by name, as `pm run pm` does) rebuilding every store; what they hold, its log."""
    config = replace(config, state_dir=state_dir, partitions="all", rebuild_workers=workers)
    log = io.StringIO()
    pm = ProcessManager(config, max_active=10**9, log=log, catch_up_timeout=60.0)
    run_rebuild(pm)
    return {**stores_held(config), "unconfirmed": sorted(pm._unconfirmed.items())}, log.getvalue()


def test_workers_rebuild_what_the_pm_alone_rebuilds(
    topics: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every other entry without its record: the workers re-decide those (they load the app by name).
    _journal(topics, 24, lambda n, total: n % 2 == 0)
    monkeypatch.setattr(manager, "WORKER_MIN_RECORDS", 1)  # every partition is "large"
    alone, alone_log = _rebuild(topics, tmp_path / "alone", workers=0)
    # The app's module prints on stdout when imported, in the workers too (their results' channel).
    together, log = _rebuild(replace(topics, app="noisy_app:app"), tmp_path / "together", workers=2)
    assert "in worker processes" not in alone_log
    # 6 partitions: the PM keeps one share of three, the workers fold the rest (not the PM after them).
    folded = re.search(
        r"rebuilt 6 partitions, 4 in worker processes: (\d+) journal entries \((\d+) by the workers\)", log
    )
    assert folded is not None, log
    by_workers = sum(
        int(n)
        for p, n in re.findall(r"rebuilt partition (\d+) from the journal: (\d+) entries", log)
        if int(p) % 3
    )
    assert 0 < by_workers == int(folded[2]) < int(folded[1])
    assert len(together["records"]) == 24 and together["unconfirmed"]
    assert together == alone


def test_a_worker_that_fails_stops_the_rebuild_with_a_catch_up_error(topics: Config, tmp_path: Path) -> None:
    config = replace(topics, state_dir=tmp_path)
    job = WorkerJob(config, 0, None, False, 5.0, 5.0)
    folds = WorkerFolds(1, "no_such_module:app")
    folds.submit([job])
    with pytest.raises(recovery.CatchUpError, match="exited with 1"):
        folds.results()
    assert all(worker.poll() is not None for worker in folds._workers)


def test_a_stuck_worker_is_stopped_at_the_deadline_with_a_catch_up_error(topics: Config, tmp_path: Path) -> None:
    config = replace(topics, state_dir=tmp_path)
    folds = WorkerFolds(1, "stuck_app:app")  # its import never returns: no result, no exit
    folds.submit([WorkerJob(config, 0, None, False, 5.0, 5.0)])
    with pytest.raises(recovery.CatchUpError, match="did not finish within 2s"):
        folds.results(timeout=2.0)
    assert all(worker.poll() is not None for worker in folds._workers)


def test_worker_count_leaves_a_core_to_the_pm_and_a_share_to_fold() -> None:
    assert worker_count(6, 2) == 2
    assert worker_count(2, 8) == 1  # the PM folds one of two partitions itself
    assert worker_count(1, 4) == 0
    assert worker_count(6, 0) == 0
    assert 0 <= worker_count(6) <= 5


_PARENT = """
import sys, time
from pathlib import Path
from pm.app import app_spec
from pm.config import Config
from pm.runtime.rebuild import WorkerFolds, WorkerJob
# Nothing listens on port 1: the worker's journal read waits for its 60 s idle timeout.
config = Config(bootstrap="127.0.0.1:1", state_dir=Path(sys.argv[1]))
folds = WorkerFolds(1, app_spec())
folds.submit([WorkerJob(config, 0, None, False, 60.0, 60.0)])
print(folds._workers[0].pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_dies_with_its_pm(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the worker's (inherited): librdkafka's connection refusals
        text=True,
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        # Until the worker opens its store it may still be starting (and checks its parent then).
        opened = time.monotonic() + 30
        while not store_path(Config(state_dir=tmp_path), 0).exists():
            assert time.monotonic() < opened and _alive(worker), "the worker never opened its store"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    try:
        while _alive(worker):
            assert time.monotonic() < deadline, f"rebuild worker {worker} outlived its PM"
            time.sleep(0.05)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_rebuild_stopped_halfway_goes_on_from_its_store(
    topics: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold stopped after some windows (a kill, a worker killed with its sibling's failure) leaves a store
    the next start takes as this journal's and finishes, not one refused as foreign."""
    _journal(topics, 12, lambda n, total: True)
    alone, _ = _rebuild(topics, tmp_path / "alone", workers=0)
    monkeypatch.setattr(recovery, "FOLD_WINDOW", 2)
    real_batches = JournalReader.batches

    def small_batches(reader: JournalReader) -> Iterator[list[Any]]:  # a window per two records
        for batch in real_batches(reader):
            yield from (batch[i : i + 2] for i in range(0, len(batch), 2))

    monkeypatch.setattr(JournalReader, "batches", small_batches)
    writes: dict[Path, int] = {}
    real_write = PartitionStore.write

    def stop_at_a_second_window(store: PartitionStore, change: Any) -> None:
        writes[store.path] = writes.get(store.path, 0) + 1
        if writes[store.path] == 2:  # one window folded into this store, its anchor written
            raise RuntimeError("stopped halfway")
        real_write(store, change)

    monkeypatch.setattr(PartitionStore, "write", stop_at_a_second_window)
    with pytest.raises(RuntimeError, match="stopped halfway"):
        _rebuild(topics, tmp_path / "halfway", workers=0)
    monkeypatch.setattr(PartitionStore, "write", real_write)
    assert [path for path, count in writes.items() if count == 2]  # a store was left with one window folded
    finished, _ = _rebuild(topics, tmp_path / "halfway", workers=0)
    # The store as a whole rebuild makes it (outputs kept for re-emission: only those after the anchor,
    # as on any restart on a store).
    assert {k: v for k, v in finished.items() if k != "unconfirmed"} == {
        k: v for k, v in alone.items() if k != "unconfirmed"
    }


def test_workers_started_ahead_of_an_assignment_that_never_comes_are_stopped(
    topics: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _journal(topics, 2, lambda n, total: True)
    monkeypatch.setattr(manager, "WORKER_MIN_RECORDS", 1)
    config = replace(topics, state_dir=tmp_path, rebuild_workers=1)  # group mode: assigned on a later poll
    pm = ProcessManager(config, max_active=10**9, log=io.StringIO())
    try:
        pm.start()
        assert pm._warm is not None and pm._warm.size == 1  # no store, a journal: started at once
        pids = [worker.pid for worker in pm._warm._workers]
    finally:
        pm.close()
    assert not any(_alive(pid) for pid in pids)


def test_a_window_groups_each_process_in_journal_order_with_keyless_records_among_keyed_ones() -> None:
    """`WindowFold` groups a window by raw key (one decode per process); a keyless record (not written by
    the PM) is placed by the process its entry names, and each process's indices stay in journal order
    (the last is the entry a fold takes)."""
    writer = JournalWriter(Config(), Scenario(Config(), "w"))
    per_process = [list(writer.entries(i, "status")) for i in range(3)]
    window: list[RawJournalRecord] = []
    for row in itertools.zip_longest(*per_process):
        for item in row:
            if item is not None:
                partition, value, cid = item
                n = len(window)
                key = None if n % 4 == 1 else cid.encode()  # every fourth record keyless
                window.append(RawJournalRecord(partition, n, key, value))
    expected: dict[str, list[int]] = {}
    for index, record in enumerate(window):
        expected.setdefault(decode_entry(record).correlation_id, []).append(index)
    fold = recovery.WindowFold(Registry([CUSTOMER_EMAIL]), None, window)  # type: ignore[arg-type]
    assert fold.positions == expected
