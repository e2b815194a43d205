"""The process manager runtime: consume inputs, decide, journal, emit, all in one transaction per batch.

Commit order of one batch (`ProcessManager.run_once`), modelled on Quix
Streams' checkpoint:

1. `begin_transaction`; for each input record: decode, check that it is keyed by
   its correlation ID on that key's partition (`pm.integrity`; bad -> `pm.dlq`), drop
   duplicates (event ID already applied to that process), decide, produce the
   journal entry, the commands and the published events. Due timers produce
   their `TimerFired` in the same transaction.
2. `flush`: every record of the transaction is delivered; the delivery reports
   tell the journal offsets the store will record.
3. `send_offsets_to_transaction`: the input offsets join the transaction.
4. `commit_transaction`: journal, commands, DLQ records and input offsets
   become visible together (exactly-once on Kafka).
5. Only now the store: one RocksDB WriteBatch per partition store (states,
   timer index, journal offset). A crash between 4 and 5 leaves the store
   behind the journal; the catch-up on the next assignment folds the missing
   entries, so nothing is lost, and the committed input offsets mean nothing
   is decided twice.

On an abortable error the transaction is aborted, the consumer rewound to the
batch's first offsets and the batch's in-memory changes dropped (the cache and
stores are only touched in step 5); the records are simply consumed again.
On a broker that shows aborted records to read_committed readers, their
journal entries carry the same derived event IDs as the retry, and folding
skips inputs already applied, so the result is the same.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pm import telemetry
from pm.app import App, load_app
from pm.codec import CodecError, decode, encode
from pm.config import Config
from pm.dlq import DLQ_TOPIC, dead_letter
from pm.errors import PmError
from pm.events import ApprovalDecided, Event, JournalEntry
from pm.heap import trim_heap
from pm.integrity import record_problem, shown
from pm.journal import (
    JOURNAL_TOPIC,
    JournalError,
    JournalIdle,
    Outcome,
    ProcessRecord,
    Verifier,
    advance,
    build_entry,
    evaluate,
    fold_entry,
    iter_journal,
)
from pm.kafka import make_admin, make_consumer, make_transactional_producer
from pm.process import InvalidInput, ProcessDefinition, Status
from pm.registry import Registry
from pm.store import PartitionStore, StoreError, StoreWrite, TimerEntry, store_path
from pm.timers import TimerService, fired_event
from pm.topics import check_topics, load_layout

__all__ = [
    "ProcessManager",
    "RuntimeStats",
    "FencedError",
    "run_process_manager",
    "stage_change",
]

# A catch-up of one partition this long leaves enough freed heap to be worth returning (checked per
# partition: a rebuild of many small partitions does not trim, and does not need to).
TRIM_AFTER_ENTRIES = 10_000
UNCONFIRMED_LIMIT = 10_000  # catch-up outputs kept for re-emission; only the journal's tail matters
TIMERS_TOPIC = "pm.timers"


class FencedError(PmError, RuntimeError):
    """Another instance with the same --instance-id took over; this one must stop."""


def stage_change(write: StoreWrite, old: ProcessRecord | None, new: ProcessRecord) -> None:
    """Add a process record change to a store write: the record, timer index diff, active count."""
    write.put_record(new.correlation_id, new.to_json())
    old_timers = old.timers if old is not None else {}
    for timer_id, (due_ms, _name) in old_timers.items():
        if new.timers.get(timer_id, (None,))[0] != due_ms:
            write.remove_timer(due_ms, timer_id)
    for timer_id, (due_ms, name) in new.timers.items():
        if old_timers.get(timer_id, (None,))[0] != due_ms:
            write.add_timer(TimerEntry(new.correlation_id, timer_id, name, due_ms))
    write.active_delta += int(new.active) - int(old.active if old is not None else False)


@dataclass
class RuntimeStats:
    batches: int = 0
    handled: int = 0  # inputs journaled
    duplicates: int = 0
    reemitted: int = 0  # outputs produced again for inputs journaled by an unconfirmed transaction
    dlq: int = 0
    timers_fired: int = 0
    aborts: int = 0
    deferred: int = 0  # start-topic records put back because of backpressure


@dataclass
class _Change:
    partition: int
    before: ProcessRecord | None  # the record before this batch (for the store diff)
    after: ProcessRecord
    definition: ProcessDefinition[Any]
    entry_id: str  # the last journal entry of this process in the batch


@dataclass
class Batch:
    """Everything one transaction changes; dropped as a whole when the transaction aborts."""

    now: datetime  # the decision time of this batch's inputs (recorded in their journal entries)
    changes: dict[str, _Change] = field(default_factory=dict)
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    deferred: dict[tuple[str, int], int] = field(default_factory=dict)  # backpressure: put back from here
    journal_offsets: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # entry id -> (partition, offset)
    delivery_errors: list[str] = field(default_factory=list)
    fired: list[TimerEntry] = field(default_factory=list)
    handled: int = 0
    duplicates: int = 0
    reemitted: int = 0  # outputs produced again for inputs journaled by an unconfirmed transaction
    dlq: int = 0
    active_delta: int = 0
    decided_at: dict[tuple[str, int, int], datetime] = field(default_factory=dict)  # input position -> now

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.first_offsets.setdefault((topic, partition), offset)
        self.next_offsets[(topic, partition)] = offset + 1

    def on_journal_delivery(self, entry_id: str) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.delivery_errors.append(str(err))
            else:
                self.journal_offsets[entry_id] = (int(msg.partition() or 0), int(msg.offset() or 0))

        return report

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))


class ProcessManager:
    """One PM instance. `start()`, then `run_once()` in a loop (or `run(stop)`), then `close()`."""

    def __init__(
        self,
        config: Config,
        definitions: Sequence[ProcessDefinition[Any]] | None = None,
        *,
        app: App | None = None,
        max_active: int = 1000,
        rebuild: bool = False,
        verifier: Verifier | None = None,
        cache_size: int = 10_000,
        batch_size: int = 500,
        log: TextIO | None = None,
        timer_service: TimerService | None = None,
        anchor_timeout: float = 10.0,
        catch_up_timeout: float = 60.0,
    ) -> None:
        self.config = config
        self.app = app if app is not None else load_app(config.app or None)
        self.registry = Registry(definitions if definitions is not None else self.app.processes)
        # New processes open from these topics; those with backpressure pause above max_active.
        self._input_topics = self.app.input_topics
        self._backpressure_topics = frozenset(config.topic(t) for t in self.app.backpressure_topics)
        self.max_active = max_active
        self.rebuild = rebuild
        self.verifier = verifier
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.log = log if log is not None else sys.stderr
        self.timers = timer_service or TimerService()
        # How long to wait for the journal record a store last folded before calling the store foreign:
        # brokers answer a fetch past the end with an error (Kafka) or with silence (Tansu).
        self.anchor_timeout = anchor_timeout
        self.catch_up_timeout = catch_up_timeout
        self.stats = RuntimeStats()
        self.stores: dict[int, PartitionStore] = {}
        self._active: dict[int, int] = {}
        self._cache: OrderedDict[str, tuple[int, ProcessRecord, ProcessDefinition[Any]]] = OrderedDict()
        self._assignment: list[TopicPartition] = []
        self._paused: list[TopicPartition] = []
        # Outputs of journal entries met during catch-up, by input position (see _reemit).
        self._unconfirmed: OrderedDict[tuple[str, int, int], tuple[bytes, ...]] = OrderedDict()
        # Decision times of inputs whose transaction aborted: the retry decides them with the same
        # time, so a broker that shows aborted records holds identical entries for one input (and
        # a fold equals the live store). The price: an input whose commit keeps failing for longer
        # than a step timeout is finally decided with its first, old time (README, known limits).
        self._retry_times: dict[tuple[str, int, int], datetime] = {}
        self._journal_topic_id: str | None = None
        # Physical input topic -> the partition count its records are placed by (see start()).
        self._partitions: dict[str, int] = {}
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self.assignments = 0  # completed assignments (stores open and caught up): tests and demos wait on it

    # ------------------------------------------------------------ lifecycle

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise PmError("process manager not started")
        return self._producer

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise PmError("process manager not started")
        return self._consumer

    @property
    def transactional_id(self) -> str:
        return f"pm-{self.config.topic_prefix}{self.config.instance_id}"

    @property
    def group_id(self) -> str:
        return f"{self.config.topic_prefix}pm"

    def start(self) -> None:
        layout = load_layout(app=self.app)
        problems = check_topics(self.config, layout)
        if problems:
            raise PmError("the topics do not fit the process manager:\n  " + "\n  ".join(problems))
        # The partition count records are checked against (record_problem): topics.yaml's, which
        # check_topics just verified the broker has. Not live metadata: partitions an operator adds
        # later move keys (hash mod n changes) while the stores and journal stay placed by the old
        # count, so records routed by the new count must be refused, not decided on a foreign store.
        self._partitions = {self.config.topic(t): layout.spec(t).partitions for t in self._input_topics}
        self._journal_topic_id = self._topic_id(self.config.topic(JOURNAL_TOPIC))
        # The producer first: init_transactions fences and aborts what a previous run of this
        # instance left open, which would otherwise hold read_committed (and our catch-up) back.
        self._producer = make_transactional_producer(self.config, "pm", self.transactional_id)
        self._consumer = make_consumer(
            self.config,
            "pm",
            self.group_id,
            **{
                "group.instance.id": self.config.instance_id,
                # Catch-up (a full rebuild, on a new store) runs inside the assignment callback, without
                # polling; give it time before the group decides this member is stuck.
                "max.poll.interval.ms": 1_800_000,
                # librdkafka's own statistics carry the per-partition lag (see _on_stats).
                "statistics.interval.ms": 15_000,
                "stats_cb": self._on_stats,
            },
        )
        self.consumer.subscribe(
            [self.config.topic(t) for t in self._input_topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def close(self) -> None:
        """Leave the group (stores closed by the revoke) and release everything."""
        if self._consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self._consumer.close()
            self._consumer = None
        self._close_stores(list(self.stores))
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def run(self, stop: threading.Event, poll_timeout: float = 0.2) -> None:
        while not stop.is_set():
            self.run_once(poll_timeout)

    def _topic_id(self, topic: str) -> str | None:
        """The broker's topic ID (KIP-516) when it has one: a recreated topic gets a new one."""
        try:
            from confluent_kafka import TopicCollection

            admin = make_admin(self.config, "pm-admin")
            futures = admin.describe_topics(TopicCollection([topic]), request_timeout=10)
            description = futures[topic].result(timeout=10)
            topic_id = str(description.topic_id) if description.topic_id is not None else ""
        except Exception:  # not all brokers/clients support it: the anchor check still applies
            return None
        if not topic_id or set(topic_id.replace("-", "")) <= {"0", "A"}:
            return None
        return topic_id

    # ------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assignment = list(partitions)
        # librdkafka keeps an application pause across revoke/assign: a start-topic partition paused
        # before a rebalance would never be fetched again. Start unpaused; _backpressure re-pauses.
        consumer.resume(partitions)
        self._paused = []
        self.timers.reset()
        wanted = sorted({tp.partition for tp in partitions})
        for partition in wanted:
            if partition not in self.stores:
                self._open_store(partition)
        self._backpressure()
        self.assignments += 1

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = sorted({tp.partition for tp in partitions})
        self._close_stores(revoked)
        self._cache.clear()
        self.timers.reset()
        # Only the revoked partitions: a kept partition's aborted batch is still to be retried.
        self._retry_times = {k: v for k, v in self._retry_times.items() if k[1] not in revoked}
        self._assignment = [tp for tp in self._assignment if tp.partition not in revoked]
        self._paused = [tp for tp in self._paused if tp.partition not in revoked]

    def _close_stores(self, partitions: Iterable[int]) -> None:
        for partition in list(partitions):
            store = self.stores.pop(partition, None)
            self._active.pop(partition, None)
            if store is not None:
                store.close()

    def _open_store(self, partition: int) -> None:
        path = store_path(self.config, partition)
        store = PartitionStore(path, partition)
        try:
            problem = self._identity_problem(store)
            if problem is None:
                try:
                    self._catch_up(store, partition)
                except _AnchorMismatch as exc:
                    problem = str(exc)
            if problem is not None:
                if not self.rebuild:
                    raise StoreError(
                        f"store {path} does not belong to journal {self.config.topic(JOURNAL_TOPIC)} "
                        f"partition {partition} ({problem}): run `pm run pm --rebuild` to rebuild it from "
                        "the journal, or point --state-dir elsewhere"
                    )
                print(f"pm: rebuilding store {path} ({problem})", file=self.log, flush=True)
                store.destroy()
                store = PartitionStore(path, partition)
                self._catch_up(store, partition)
        except BaseException:
            store.close()
            raise
        if store.identity is None:
            store.set_identity(
                {"topic": self.config.topic(JOURNAL_TOPIC), "topic_id": self._journal_topic_id}
            )
        self.stores[partition] = store
        self._active[partition] = store.active

    def _identity_problem(self, store: PartitionStore) -> str | None:
        identity = store.identity
        if identity is None:
            return None if store.anchor is None else "the store has no journal identity"
        if identity.get("topic") != self.config.topic(JOURNAL_TOPIC):
            return f"it was built from topic {identity.get('topic')}"
        stored_id = identity.get("topic_id")
        if stored_id and self._journal_topic_id and stored_id != self._journal_topic_id:
            return f"topic ID {stored_id} recorded, the journal topic now has {self._journal_topic_id}"
        return None

    def _catch_up(self, store: PartitionStore, partition: int) -> None:
        """Fold the journal partition from the store's position to its end, before any input is handled."""
        anchor = store.anchor
        start = self._anchor_start(partition, anchor[0]) if anchor is not None else 0
        from_scratch = anchor is None
        started = time.monotonic()
        overlay: dict[str, ProcessRecord] = {}
        write = StoreWrite()
        folded = 0
        anchored = anchor is None
        try:
            records = iter_journal(
                self.config,
                [partition],
                {partition: start},
                idle_timeout=self.anchor_timeout if anchor is not None else self.catch_up_timeout,
                reset="error" if anchor is not None else "earliest",
            )
            for record in records:
                if not anchored:
                    if anchor is not None and record.offset < anchor[0]:
                        continue  # before the anchor: already reflected in the store
                    # The record the store last folded must still be there, unchanged.
                    if anchor is not None and (record.offset, record.entry.event_id) != anchor:
                        raise _AnchorMismatch(
                            f"journal offset {record.offset} holds {record.entry.event_id}, the store expected "
                            f"{anchor[1]} at offset {anchor[0]}"
                        )
                    anchored = True
                    continue
                correlation_id = record.entry.correlation_id
                before = overlay.get(correlation_id) or self._stored(store, correlation_id)
                after = fold_entry(self.registry, before, record.entry, record.event, record.offset)
                if after is not None:
                    stage_change(write, before, after)
                    overlay[correlation_id] = after
                self._remember_outputs(record.entry)
                write.advance(record.offset, record.entry.event_id)
                folded += 1
                if folded % 5000 == 0:
                    store.write(write)
                    write, overlay = StoreWrite(), {}
                    if from_scratch:
                        print(
                            f"pm: rebuilding partition {partition}: {folded} journal entries folded",
                            file=self.log,
                            flush=True,
                        )
        except JournalIdle as exc:
            if not anchored:
                raise _AnchorMismatch(
                    f"no journal record at offset {start}, the last one the store reflects"
                ) from exc
            raise StoreError(f"catching up partition {partition}: {exc}") from exc
        except JournalError as exc:
            if not anchored:
                raise _AnchorMismatch(
                    f"the journal has no offset {start} the store reflects ({exc})"
                ) from exc
            raise StoreError(f"catching up partition {partition}: {exc}") from exc
        if not anchored:
            raise _AnchorMismatch(
                f"the journal ends before offset {anchor[0] if anchor else 0} the store reflects"
            )
        store.write(write)
        if folded >= TRIM_AFTER_ENTRIES:
            trim_heap()  # the fold's garbage is freed, but glibc keeps the pages: hand them back
        if from_scratch and folded:
            elapsed = time.monotonic() - started
            print(
                f"pm: rebuilt partition {partition} from the journal: {folded} entries in {elapsed:.1f}s",
                file=self.log,
                flush=True,
            )

    def _anchor_start(self, partition: int, anchor_offset: int) -> int:
        """Where to start reading to find the anchor: the anchor itself, or the last batch when it lies beyond.

        Some brokers answer a fetch past the end with silence instead of an error, and report a
        high watermark below the true end (tansu.md). Reading from min(anchor, high - 1) always
        starts on an existing offset, so the partition EOF arrives and decides: the anchor was
        seen (fine) or not (the store is foreign). The watermark only picks the start, it never
        decides whether we are caught up.
        """
        try:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.config.topic(JOURNAL_TOPIC), partition), timeout=10
            )
        except KafkaException:
            return anchor_offset
        if high <= 0:
            return 0
        return max(0, min(anchor_offset, high - 1))

    def _stored(self, store: PartitionStore, correlation_id: str) -> ProcessRecord | None:
        data = store.get_record(correlation_id)
        if data is None:
            return None
        record, _definition = ProcessRecord.from_json(self.registry, correlation_id, data)
        return record

    # ------------------------------------------------------------ the batch

    def _next_batch(self, timeout: float) -> list[Message]:
        """Up to `batch_size` records: wait at most `timeout` for the first, then take what is already fetched.

        `consume(n, timeout)` waits the whole timeout whenever fewer than n records are there, which
        added up to `timeout` (p50 ~190 ms in bench e2e) to every decision under light load.
        """
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=0)
        if messages:
            return messages
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        if self.batch_size <= 1:
            return [first]
        return [first, *self.consumer.consume(num_messages=self.batch_size - 1, timeout=0)]

    def run_once(self, timeout: float = 0.2) -> int:
        """Consume one batch and commit it in one transaction; returns the number of inputs journaled."""
        # A rebalance can run inside the fetch calls: records of a partition revoked meanwhile are not
        # ours any more (no store; their offsets are uncommitted, so the new owner fetches them).
        messages = [
            m for m in self._next_batch(timeout) if m.error() is not None or m.partition() in self.stores
        ]
        due = self.timers.due(self.stores) if self.stores else []  # re-checked against the batch below
        if not messages and not due:
            if self._paused:
                self._backpressure()
            return 0
        batch = Batch(now=self.timers.now())
        try:
            # 1. one transaction for the whole batch
            self.producer.begin_transaction()
            for message in messages:
                self._handle(batch, message)
            for partition, timer in due:
                change = batch.changes.get(timer.correlation_id)
                if change is not None and timer.timer_id not in change.after.timers:
                    continue  # cancelled (or the process ended) by an input of this very batch
                self._fire(batch, partition, timer)
            # 2. everything delivered; the journal offsets are now known
            self._flush(batch)
            # 3. the input offsets become part of the transaction
            offsets = self._commit_offsets(batch)
            if offsets:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), 30
                )
            # 4. commit: outputs and input offsets visible together
            self._commit()
        except KafkaException as exc:
            self._abort(batch, exc)
            return 0
        except BaseException:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(10)
            self._rewind(batch)
            raise
        # 5. the store, after the commit (a crash before this is repaired by catch-up)
        self._apply(batch)
        return batch.handled

    def _handle(self, batch: Batch, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            print(f"pm: consumer: {error}", file=self.log, flush=True)
            return
        physical = str(message.topic())
        partition = int(message.partition() or 0)
        offset = int(message.offset() or 0)
        if (physical, partition) in batch.deferred:
            return  # this partition is put back for the rest of the batch
        topic = self.config.logical_topic(physical)
        raw = message.value()
        if raw is None:
            batch.consumed(physical, partition, offset)
            self._dlq(batch, message, "record has no value", "EmptyRecord")
            return
        try:
            event = decode(raw)
        except CodecError as exc:
            batch.consumed(physical, partition, offset)
            self._dlq(batch, message, str(exc), type(exc).__name__)
            return
        correlation_id = event.correlation_id
        # The key decides the partition, the partition decides the store: a record not keyed by its
        # correlation ID, or not where that key hashes, would split its process. Refuse it.
        problem = record_problem(message.key(), partition, self._partition_count(physical), correlation_id)
        if problem is not None:
            batch.consumed(physical, partition, offset)
            self._dlq(batch, message, problem[1], problem[0])
            return
        before, definition = self._lookup(batch, correlation_id, partition)
        if before is not None and before.seen(event.event_id):
            batch.consumed(physical, partition, offset)
            batch.duplicates += 1
            self._reemit(batch, (topic, partition, offset), correlation_id)
            telemetry.events_processed().add(1, {"pm.event_type": event.type, "pm.outcome": "duplicate"})
            return
        if before is None:
            starter = self.registry.starter(event)
            if starter is None:
                batch.consumed(physical, partition, offset)
                self._dlq(
                    batch,
                    message,
                    f"no process with correlation ID {shown(correlation_id)}, and a {event.type} does not start one",
                    "UnknownProcess",
                )
                return
            if physical in self._backpressure_topics and self._active_count(batch) >= self.max_active:
                # Backpressure: put this record (and the rest of its partition) back; resume later.
                batch.deferred[(physical, partition)] = offset
                return
            definition = starter
            try:
                state = definition.initial_state(event)
            except InvalidInput as exc:  # the definition refuses this start event: not a bug
                batch.consumed(physical, partition, offset)
                self._dlq(batch, message, f"{definition.name}: {exc}", "InvalidInput")
                return
            except Exception as exc:  # a definition bug on a start event: nothing to fail yet, so DLQ it
                batch.consumed(physical, partition, offset)
                self._dlq(batch, message, f"{definition.name}.initial_state: {exc}", type(exc).__name__)
                return
        else:
            assert definition is not None
            state = before.state
        batch.consumed(physical, partition, offset)
        now = self._retry_times.pop((physical, partition, offset), batch.now)
        batch.decided_at[(physical, partition, offset)] = now
        with self._span(message, event, topic, partition, offset):
            verifier = self.verifier if isinstance(event, ApprovalDecided) else None
            started = time.perf_counter()
            outcome = evaluate(definition, state, event, verifier, now=now)
            telemetry.decision_latency().record(
                time.perf_counter() - started, {"pm.process": definition.name, "pm.event_type": event.type}
            )
            try:
                after, entry = self._entry(
                    definition, before, state, event, raw, topic, partition, offset, outcome, now
                )
            except (
                Exception
            ) as exc:  # e.g. a decision whose outputs break their schema: fail only this process
                outcome = Outcome("failed", f"{type(exc).__name__}: {exc}", None)
                after, entry = self._entry(
                    definition, before, state, event, raw, topic, partition, offset, outcome, now
                )
            telemetry.events_processed().add(1, {"pm.event_type": event.type, "pm.outcome": outcome.outcome})
            _count_transition(before.status if before is not None else None, after.status)
            headers = self._trace_headers()
            self._produce(
                self.config.topic(JOURNAL_TOPIC),
                encode(entry),
                key=correlation_id,
                partition=partition,  # the journal partition is the input partition (co-partitioned)
                headers=headers,
                on_delivery=batch.on_journal_delivery(entry.event_id),
            )
            if outcome.outcome == "applied" and outcome.decision is not None:
                # The entry already holds every output encoded (build_entry): send those bytes, not a
                # second encoding (encode was ~1/6 of the PM's time, half of it spent twice).
                outputs = (*outcome.decision.commands, *outcome.decision.publish)
                encoded = (*entry.payload.commands, *entry.payload.published)
                for output, value in zip(outputs, encoded, strict=True):
                    self._produce(
                        self.config.topic(output.topic),
                        value,
                        key=correlation_id,
                        headers=headers,
                        on_delivery=batch.on_delivery,
                    )
        previous = batch.changes.get(correlation_id)
        batch.changes[correlation_id] = _Change(
            partition=partition,
            before=previous.before if previous is not None else before,
            after=after,
            definition=definition,
            entry_id=entry.event_id,
        )
        batch.active_delta += int(after.active) - int(before.active if before is not None else False)
        batch.handled += 1

    @staticmethod
    def _entry(
        definition: ProcessDefinition[Any],
        before: ProcessRecord | None,
        state: Any,
        event: Event,
        raw: bytes,
        topic: str,
        partition: int,
        offset: int,
        outcome: Outcome,
        now: datetime,
    ) -> tuple[ProcessRecord, JournalEntry]:
        """The process record after `outcome`, and the journal entry recording it (outputs encoded)."""
        after = advance(definition, before, state, event, outcome, -1)
        entry = build_entry(
            definition,
            event,
            bytes(raw),
            topic=topic,
            partition=partition,
            offset=offset,
            outcome=outcome,
            status=after.status,
            decided_at=now,
        )
        return after, entry

    def _remember_outputs(self, entry: JournalEntry) -> None:
        """Keep the outputs of a journal entry found during catch-up, keyed by the input's position."""
        p = entry.payload
        if p.outcome != "applied" or not (p.commands or p.published):
            return
        self._unconfirmed[(p.input_topic, p.input_partition, p.input_offset)] = (*p.commands, *p.published)
        while len(self._unconfirmed) > UNCONFIRMED_LIMIT:
            self._unconfirmed.popitem(last=False)

    def _reemit(self, batch: Batch, position: tuple[str, int, int], correlation_id: str) -> None:
        """Produce again the outputs of an input whose journal entry exists but whose offset was never committed.

        The same input at the same position comes back only when the transaction that journaled it
        did not commit (offsets and journal commit together). On Apache Kafka such an entry is
        aborted and invisible, so this never triggers; on a broker that shows aborted records to
        read_committed readers (tansu.md) the entry was folded at catch-up while some of its
        commands may never have been written. Re-producing them is safe: step consumers dedupe by
        command ID and the PM dedupes results by event ID.
        """
        outputs = self._unconfirmed.pop(position, ())
        for value in outputs:
            self._produce(
                self.config.topic(decode(value).topic),
                value,
                key=correlation_id,
                headers=self._trace_headers(),
                on_delivery=batch.on_delivery,
            )
        if outputs:
            batch.reemitted += len(outputs)

    def _lookup(
        self, batch: Batch, correlation_id: str, partition: int
    ) -> tuple[ProcessRecord | None, ProcessDefinition[Any] | None]:
        """The process as of this point of the batch: batch overlay, then cache, then store."""
        change = batch.changes.get(correlation_id)
        if change is not None:
            return change.after, change.definition
        cached = self._cache.get(correlation_id)
        if cached is not None:
            self._cache.move_to_end(correlation_id)
            return cached[1], cached[2]
        store = self.stores.get(partition)
        if store is None:
            raise PmError(f"no store open for partition {partition} (not assigned?)")
        data = store.get_record(correlation_id)
        if data is None:
            return None, None
        record, definition = ProcessRecord.from_json(self.registry, correlation_id, data)
        self._remember(correlation_id, partition, record, definition)
        return record, definition

    def _remember(
        self, correlation_id: str, partition: int, record: ProcessRecord, definition: ProcessDefinition[Any]
    ) -> None:
        self._cache[correlation_id] = (partition, record, definition)
        self._cache.move_to_end(correlation_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _partition_count(self, physical: str) -> int:
        count = self._partitions.get(physical)
        if count is None:  # only subscribed topics are consumed, and start() knows them all
            raise PmError(f"record from {physical}, which is not a process manager input")
        return count

    def _fire(self, batch: Batch, partition: int, timer: TimerEntry) -> None:
        event = fired_event(timer)
        self._produce(
            self.config.topic(TIMERS_TOPIC),
            encode(event),
            key=timer.correlation_id,
            # The store's partition, which is partition_for(correlation ID): a process is only created
            # from a record that passed record_problem there, so the TimerFired passes it too.
            partition=partition,
            headers=self._trace_headers(),
            on_delivery=batch.on_delivery,
        )
        batch.fired.append(timer)

    def _dlq(self, batch: Batch, message: Message, reason: str, error_type: str) -> None:
        physical = str(message.topic())
        topic = self.config.logical_topic(physical)
        partition = int(message.partition() or 0)
        offset = int(message.offset() or 0)
        record, headers = dead_letter(
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            reason=reason,
            error_type=error_type,
            failed_by="pm",
            now=datetime.now(UTC),
        )
        self._produce(
            self.config.topic(DLQ_TOPIC),
            encode(record),
            key=message.key(),
            headers=headers,
            on_delivery=batch.on_delivery,
        )
        batch.dlq += 1
        telemetry.dlq_records().add(1, {"messaging.destination.name": topic, "error.type": error_type})
        print(
            f"pm: {physical}/{partition}/{offset} -> {self.config.topic(DLQ_TOPIC)}: {error_type}: {reason}",
            file=self.log,
            flush=True,
        )

    def _produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None,
        partition: int | None = None,
        headers: telemetry.Headers | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {
            "key": key,
            "value": value,
            "headers": headers or None,
            "on_delivery": on_delivery,
        }
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:  # local queue full: serve delivery reports and retry, never drop
                self.producer.poll(0.1)

    def _flush(self, batch: Batch) -> None:
        remaining = self.producer.flush(60)
        if remaining:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, f"{remaining} records not delivered"))
        if batch.delivery_errors:
            raise KafkaException(
                KafkaError(
                    KafkaError._FAIL, f"delivery failed: {batch.delivery_errors[0]}", txn_requires_abort=True
                )
            )

    def _commit_offsets(self, batch: Batch) -> list[TopicPartition]:
        offsets = dict(batch.next_offsets)
        for key, offset in batch.deferred.items():
            if key in batch.first_offsets:
                offsets[key] = offset
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]

    def _commit(self) -> None:
        for attempt in range(5):
            try:
                self.producer.commit_transaction(30)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and not error.txn_requires_abort() and attempt < 4:
                    continue
                raise

    def _abort(self, batch: Batch, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is not None and (
            error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
        ):
            raise FencedError(
                f"transactional producer {self.transactional_id} can no longer commit ({error}): another "
                "instance with the same --instance-id took over; stop this one"
            ) from exc
        print(f"pm: transaction aborted, retrying the batch: {exc}", file=self.log, flush=True)
        try:
            self.producer.abort_transaction(30)
        except KafkaException as abort_exc:
            inner = abort_exc.args[0]
            if isinstance(inner, KafkaError) and inner.fatal():
                raise FencedError(f"cannot abort the transaction: {inner}") from abort_exc
        self._rewind(batch)
        self.stats.aborts += 1

    def _rewind(self, batch: Batch) -> None:
        """Put the consumer back to the batch's first offsets: the records will be consumed again."""
        if len(self._retry_times) > UNCONFIRMED_LIMIT:
            self._retry_times.clear()  # positions never consumed again (moved away): only a bound
        self._retry_times.update(batch.decided_at)
        firsts = dict(batch.first_offsets)
        for key, offset in batch.deferred.items():
            firsts[key] = min(firsts.get(key, offset), offset)
        for (topic, partition), offset in firsts.items():
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(topic, partition, offset))

    def _apply(self, batch: Batch) -> None:
        """Step 5: the committed batch goes to the stores (one WriteBatch each) and the cache."""
        writes: dict[int, StoreWrite] = {}
        for correlation_id, change in batch.changes.items():
            located = batch.journal_offsets.get(change.entry_id)
            if located is not None:
                change.after.journal_offset = located[1]
            write = writes.setdefault(change.partition, StoreWrite())
            stage_change(write, change.before, change.after)
            self.timers.settle(
                t for t in (change.before.timers if change.before else {}) if t not in change.after.timers
            )
            self._remember(correlation_id, change.partition, change.after, change.definition)
        for entry_id, (partition, offset) in batch.journal_offsets.items():
            writes.setdefault(partition, StoreWrite()).advance(offset, entry_id)
        for partition, write in writes.items():
            store = self.stores.get(partition)
            if store is not None:
                store.write(write)
                self._active[partition] = store.active
        self.timers.mark_fired(batch.fired)
        for (topic, partition), offset in batch.deferred.items():
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(topic, partition, offset))
        self.stats.batches += 1
        self.stats.handled += batch.handled
        self.stats.duplicates += batch.duplicates
        self.stats.reemitted += batch.reemitted
        self.stats.dlq += batch.dlq
        self.stats.timers_fired += len(batch.fired)
        self.stats.deferred += len(batch.deferred)
        self._backpressure(force_pause=bool(batch.deferred))

    # ------------------------------------------------------------ backpressure

    def active_count(self) -> int:
        """Processes with status running on this instance (waiting for a human does not count)."""
        return sum(self._active.values())

    def _active_count(self, batch: Batch) -> int:
        return self.active_count() + batch.active_delta

    def _backpressure(self, force_pause: bool = False) -> None:
        starts = [tp for tp in self._assignment if tp.topic in self._backpressure_topics]
        if not starts:
            return
        if (force_pause or self.active_count() >= self.max_active) and not self._paused:
            self.consumer.pause(starts)
            self._paused = starts
            print(
                f"pm: {self.active_count()} active processes (max {self.max_active}): pausing new processes",
                file=self.log,
                flush=True,
            )
        elif self._paused and self.active_count() < self.max_active:
            self.consumer.resume(self._paused)
            self._paused = []

    @property
    def paused(self) -> list[TopicPartition]:
        return list(self._paused)

    # ------------------------------------------------------------ telemetry

    @contextlib.contextmanager
    def _span(
        self, message: Message, event: Event, topic: str, partition: int, offset: int
    ) -> Iterator[None]:
        """The span of one input's handling: child of the producer's context carried in the headers.

        Attributes are built only for a recording span: with no exporter configured they would
        cost ~8 % of the PM's CPU (redaction runs over every string).
        """
        with telemetry.tracer().start_as_current_span(
            f"pm.handle {event.type}", context=telemetry.extract(message.headers())
        ) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        **telemetry.event_attributes(event),
                        **telemetry.record_attributes(topic, partition, offset),
                    }
                )
            yield

    def _on_stats(self, stats_json: str) -> None:
        """Consumer lag per input partition, from librdkafka's statistics (wrong on Tansu: tansu.md)."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        gauge = telemetry.consumer_lag()
        for physical, topic in stats.get("topics", {}).items():
            for partition, info in topic.get("partitions", {}).items():
                lag = info.get("consumer_lag", -1)
                if partition != "-1" and isinstance(lag, int) and lag >= 0:
                    gauge.set(
                        lag,
                        {
                            "messaging.destination.name": self.config.logical_topic(physical),
                            "messaging.destination.partition.id": partition,
                        },
                    )

    def _trace_headers(self) -> telemetry.Headers:
        return telemetry.inject([])


def _count_transition(old: str | None, new: str) -> None:
    """Keep the active / waiting-for-approval gauges of this instance in step with status changes."""
    if old == new:
        return
    for status, delta in ((old, -1), (new, 1)):
        if status == Status.RUNNING:
            telemetry.active_processes().add(delta)
        elif status == Status.WAITING_FOR_APPROVAL:
            telemetry.waiting_processes().add(delta)


class _AnchorMismatch(Exception):
    pass


def run_process_manager(
    config: Config,
    *,
    max_active: int = 1000,
    rebuild: bool = False,
    stop: threading.Event | None = None,
    definitions: Sequence[ProcessDefinition[Any]] | None = None,
    app: App | None = None,
    verifier: Verifier | None = None,
    log: TextIO | None = None,
    on_started: Callable[[ProcessManager], None] | None = None,
    **options: Any,
) -> RuntimeStats:
    """Run one PM instance until `stop` is set or SIGTERM/SIGINT arrives (main thread only).

    `options` go to `ProcessManager` (cache_size, batch_size, anchor_timeout, ...).
    """
    stop = stop or threading.Event()
    if verifier is None:
        try:
            from pm.approvals import ApprovalVerifier

            verifier = ApprovalVerifier(config)
        except ImportError:
            verifier = None
    manager = ProcessManager(
        config, definitions, app=app, max_active=max_active, rebuild=rebuild, verifier=verifier, log=log, **options
    )
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        manager.start()
        print(
            f"pm: process manager {config.instance_id} running (group {manager.group_id}, "
            f"transactional.id {manager.transactional_id}, max active {max_active})",
            file=manager.log,
            flush=True,
        )
        if on_started is not None:
            on_started(manager)
        manager.run(stop)
    finally:
        manager.close()
        s = manager.stats
        print(
            f"pm: stopped after {s.batches} batches: {s.handled} inputs journaled, {s.duplicates} duplicates "
            f"({s.reemitted} outputs re-emitted), "
            f"{s.dlq} to the DLQ, {s.timers_fired} timers fired, {s.aborts} aborted transactions",
            file=manager.log,
            flush=True,
        )
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return manager.stats
