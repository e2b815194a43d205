"""`rebuild`: journal entries folded per second when the PM rebuilds its store from scratch.

The journal is generated without a PM: whole `customer-email` processes (6 entries each:
e-mail, classification, policy, order, draft, sent) run through the real `decide` and
`pm.journal.build_entry`, produced straight to `pm.journal` (bench/scenario.py); each entry
carries the process record after it, as the PM writes them. Then a `ProcessManager` with an
empty state dir starts: on assignment it folds every partition from offset 0 into RocksDB
(`pm.runtime.recovery`: per window of 5,000 entries, each process's last record is taken, one
WriteBatch per window; only entries without a record are re-decided). The figure is entries / the fold time the PM
itself logs per partition ("rebuilt partition P ... in X s"), so group join is excluded;
the wall time from start to "assigned" is in the table too.

`baseline`: a raw confluent-kafka consume of the same topic (all partitions, to EOF, no decoding).
The rebuilt store is checked: one record per process, every one `sent`.

Sizes: N = 1,000,000 entries (quick: 50,000). Generating 1M entries takes ~4 minutes
and folding them several more on this 2-core machine (see RESULTS.md).
"""

from __future__ import annotations

import io
import re
import time
import uuid

from confluent_kafka import KafkaError, TopicPartition

from bench.common import Result, bench_broker, report
from bench.scenario import JournalWriter, Scenario
from pm.config import Config
from pm.journal import JOURNAL_TOPIC
from pm.kafka import make_consumer
from pm.runtime import ProcessManager
from pm.store import PartitionStore, list_store_paths
from pm.topics import load_layout

__all__ = ["run", "raw_consume", "rebuild_store", "ENTRIES_PER_PROCESS"]

ENTRIES_PER_PROCESS = 6
_REBUILT = re.compile(r"rebuilt partition (\d+) from the journal: (\d+) entries in ([\d.]+)s")
# With worker processes the partitions fold side by side: the whole rebuild's line, wall time.
_REBUILT_ALL = re.compile(
    r"rebuilt \d+ partitions, \d+ in worker processes: (\d+) journal entries .*? in ([\d.]+)s"
)


def raw_consume(config: Config, topic: str) -> tuple[int, float]:
    """(records, seconds) for a plain consumer reading every partition of `topic` to its end."""
    partitions = load_layout().spec(config.logical_topic(topic)).partitions
    consumer = make_consumer(
        config,
        "bench-raw",
        f"{config.topic_prefix}bench-raw-{uuid.uuid4().hex[:6]}",
        # As the PM's journal reader: a full prefetch queue must not postpone the next fetch by 1 s.
        **{"enable.partition.eof": True, "fetch.queue.backoff.ms": 10},
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    pending, count = set(range(partitions)), 0
    started = time.perf_counter()
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(error)
            count += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return count, elapsed


def rebuild_store(config: Config, *, timeout: float = 3600.0) -> tuple[int, float, float]:
    """Start a PM on an empty state dir; (entries folded, fold seconds, wall seconds to assigned)."""
    log = io.StringIO()
    manager = ProcessManager(config, max_active=10**9, log=log, catch_up_timeout=120.0)
    started = time.perf_counter()
    manager.start()
    try:
        deadline = time.monotonic() + timeout
        while manager.assignments == 0:
            manager.run_once(0.2)
            if time.monotonic() > deadline:
                raise RuntimeError("the PM did not finish its rebuild in time")
        wall = time.perf_counter() - started
    finally:
        manager.close()
    whole = _REBUILT_ALL.search(log.getvalue())
    if whole is not None:
        return int(whole[1]), float(whole[2]), wall
    folded = [(int(m[1]), float(m[2])) for m in _REBUILT.findall(log.getvalue())]
    return sum(n for n, _ in folded), sum(s for _, s in folded), wall


def _check_store(config: Config, processes: int) -> dict[str, int]:
    statuses: dict[str, int] = {}
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition, read_only=True)
        try:
            for _cid, record in store.records():
                statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        finally:
            store.close()
    if sum(statuses.values()) != processes or set(statuses) != {"sent"}:
        raise RuntimeError(f"rebuilt store holds {statuses}, expected {processes} sent processes")
    return statuses


def run(quick: bool, *, entries: int | None = None) -> Result:
    wanted = entries or (50_000 if quick else 1_000_000)
    processes = max(1, wanted // ENTRIES_PER_PROCESS)
    with bench_broker() as config:
        started = time.perf_counter()
        written = JournalWriter(config, Scenario(config, uuid.uuid4().hex[:6])).write(processes, "status")
        generated = time.perf_counter() - started
        raw_count, raw_seconds = raw_consume(config, config.topic(JOURNAL_TOPIC))
        folded, fold_seconds, wall = rebuild_store(config)
        statuses = _check_store(config, processes)
    if raw_count != written or folded != written:
        raise RuntimeError(f"wrote {written} entries, raw consume read {raw_count}, the PM folded {folded}")
    rate = folded / fold_seconds if fold_seconds > 0 else 0.0
    raw = raw_count / raw_seconds if raw_seconds > 0 else 0.0
    result = Result(
        "rebuild",
        rate,
        "entries/s",
        baseline=raw,
        extra={"entries": written, "processes": processes, "fold_seconds": round(fold_seconds, 1)},
    )
    report(
        [
            ("journal entries", f"{written:,} ({processes:,} processes, generated in {generated:.0f}s)"),
            ("raw consume (baseline)", f"{raw:,.0f} records/s ({raw_seconds:.1f}s)"),
            ("rebuild fold", f"{rate:,.0f} entries/s ({fold_seconds:.1f}s of folding)"),
            ("rebuild wall", f"{wall:.1f}s from start to assigned (group join included)"),
            ("store check", f"{statuses}"),
            ("ratio to raw consume", f"{result.ratio}"),
        ],
        result,
    )
    return result
