"""One batch, one transaction: what it changes (`Batch`) and the steps that commit it (`Checkpoint`).

Modelled on Quix Streams' checkpoint: the producer and consumer are handed in, and each commit
step is an explicit call, made in this order by `ProcessManager.run_once` (see `pm.runtime`):
`begin`, `produce` (per output), `flush`, `send_offsets`, `commit_transaction`, then `apply`;
on an error `abort` (or `abandon`) and `rewind` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pm import telemetry
from pm.errors import PmError
from pm.journal import ProcessRecord, stored_bytes
from pm.process import ProcessDefinition
from pm.runtime.state import Position, ProcessCache, RetryTimes, stage_change
from pm.store import PartitionStore, StoreWrite, TimerEntry
from pm.timers import TimerService

DeliveryReport = Callable[[KafkaError | None, Message], None]
# Errors that belong to one record, not to the broker or the transaction (see pm.runtime.poison).
RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_TIMESTAMP,
    }
)
# Errors of the broker or the network, whatever the records: they never make a record poison.
TRANSIENT_ERRORS = frozenset(
    getattr(KafkaError, name)
    for name in (
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_RESOLVE",
        "REQUEST_TIMED_OUT",
        "NETWORK_EXCEPTION",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "NOT_LEADER_FOR_PARTITION",
        "LEADER_NOT_AVAILABLE",
        "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR",
        "COORDINATOR_LOAD_IN_PROGRESS",
        "CONCURRENT_TRANSACTIONS",
    )
    if hasattr(KafkaError, name)
)


def transient(error: KafkaError) -> bool:
    """Not the records' fault: the broker or the network (retrying as it is can succeed)."""
    return bool(error.retriable()) or error.code() in TRANSIENT_ERRORS


class FencedError(PmError, RuntimeError):
    """Another instance with the same --instance-id took over; this one must stop."""


@dataclass
class Change:
    partition: int
    before: ProcessRecord | None  # the record before this batch (for the store diff)
    after: ProcessRecord
    definition: ProcessDefinition[Any]
    entry_id: str  # the last journal entry of this process in the batch
    record: bytes | None = None  # `after` as that entry carries it (the store takes these bytes)


@dataclass
class Batch:
    """Everything one transaction changes; dropped as a whole when the transaction aborts."""

    now: datetime  # the decision time of this batch's inputs (recorded in their journal entries)
    changes: dict[str, Change] = field(default_factory=dict)
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    deferred: dict[tuple[str, int], int] = field(default_factory=dict)  # backpressure: put back from here
    # Offsets the broker skipped (see InputHandler._skipped): put back to read them again.
    gaps: dict[tuple[str, int], int] = field(default_factory=dict)
    journal_offsets: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # entry id -> (partition, offset)
    delivery_errors: list[str] = field(default_factory=list)
    transient_delivery_errors: int = 0
    fired: list[TimerEntry] = field(default_factory=list)
    handled: int = 0
    duplicates: int = 0
    reemitted: int = 0  # outputs produced again for inputs journaled by an unconfirmed transaction
    dlq: int = 0
    active_delta: int = 0
    decided_at: dict[Position, datetime] = field(default_factory=dict)  # input position -> now
    inputs: list[Position] = field(default_factory=list)  # every input consumed, in order
    # The first offset of each partition among the records fetched for this batch, handled or not:
    # an abort mid-batch must put back the records it never reached as well.
    fetched: dict[tuple[str, int], int] = field(default_factory=dict)
    # Inputs whose own output failed with a record-specific error (see pm.runtime.poison).
    failed_inputs: dict[Position, str] = field(default_factory=dict)

    def put_back(self) -> dict[tuple[str, int], int]:
        """Partitions this batch returns to the consumer from an offset: deferred ones and gaps."""
        back = dict(self.gaps)
        for key, offset in self.deferred.items():
            back[key] = min(back.get(key, offset), offset)
        return back

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.first_offsets.setdefault((topic, partition), offset)
        self.next_offsets[(topic, partition)] = offset + 1
        self.inputs.append((topic, partition, offset))

    def delivery_for(self, position: Position, inner: DeliveryReport | None = None) -> DeliveryReport:
        """A delivery report for an output of the input at `position`: a record error names that input."""

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None and err.code() in RECORD_ERRORS:
                self.failed_inputs.setdefault(position, f"an output could not be produced: {err.str()}")
            (inner or self.on_delivery)(err, msg)

        return report

    def on_journal_delivery(self, entry_id: str) -> DeliveryReport:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.delivery_errors.append(str(err))
                self.transient_delivery_errors += int(transient(err))
            else:
                self.journal_offsets[entry_id] = (int(msg.partition() or 0), int(msg.offset() or 0))

        return report

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))
            self.transient_delivery_errors += int(transient(err))


def commit_transaction(producer: Producer) -> None:
    """Step 4: commit, retrying what is retriable and needs no abort."""
    for attempt in range(5):
        try:
            producer.commit_transaction(30)
            return
        except KafkaException as exc:
            error = exc.args[0]
            if error.retriable() and not error.txn_requires_abort() and attempt < 4:
                continue
            raise


class Checkpoint:
    """The transaction of one batch on `producer`, for records consumed by `consumer`.

    The batch's in-memory changes (`batch`) reach the cache and stores only in `apply`, after
    the commit; an abort drops them with this object.
    """

    def __init__(
        self, producer: Producer, consumer: Consumer, *, now: datetime, transactional_id: str, log: TextIO
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.transactional_id = transactional_id
        self.log = log
        self.batch = Batch(now=now)

    def begin(self) -> None:
        """Step 1: one transaction for the whole batch."""
        self.producer.begin_transaction()

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None,
        partition: int | None = None,
        headers: telemetry.Headers | None = None,
        on_delivery: DeliveryReport,
    ) -> None:
        """Produce in the transaction (never dropped: a full local queue is waited out)."""
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

    def flush(self) -> None:
        """Step 2: everything delivered; the journal offsets are now known."""
        try:
            remaining = self.producer.flush(60)
        except SystemError as exc:
            # confluent-kafka reports a fatal error met while serving delivery reports (e.g. this
            # producer fenced by a newer one) as a SystemError caused by the KafkaException.
            if isinstance(exc.__cause__, KafkaException):
                raise exc.__cause__ from None
            # Also seen without a cause (CI, a producer fenced during the flush: "returned NULL without
            # setting an exception"). A failed flush aborts the transaction, which is always safe (the
            # batch is retried), and the abort tells a fenced producer from a healthy one.
            raise KafkaException(
                KafkaError(KafkaError._FAIL, f"flush failed: {exc}", txn_requires_abort=True)
            ) from exc
        if remaining:
            raise KafkaException(
                KafkaError(KafkaError._MSG_TIMED_OUT, f"{remaining} records not delivered", retriable=True)
            )
        if self.batch.delivery_errors:
            raise KafkaException(
                KafkaError(
                    KafkaError._FAIL,
                    f"delivery failed: {self.batch.delivery_errors[0]}",
                    retriable=self.batch.transient_delivery_errors > 0,
                    txn_requires_abort=True,
                )
            )

    def offsets(self) -> list[TopicPartition]:
        """The input offsets to commit: past every record consumed, or back to a deferred one."""
        batch = self.batch
        offsets = dict(batch.next_offsets)
        for key, offset in batch.put_back().items():
            if key in batch.first_offsets:
                offsets[key] = offset
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]

    def send_offsets(self) -> None:
        """Step 3: the input offsets become part of the transaction."""
        offsets = self.offsets()
        if offsets:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)

    def abort(self, exc: KafkaException) -> None:
        """Abort after a Kafka error; FencedError when this producer can never commit again."""
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

    def abandon(self) -> None:
        """Abort on any other error: best effort, the error itself is what propagates."""
        with contextlib.suppress(KafkaException):
            self.producer.abort_transaction(10)

    def rewind(self, retry_times: RetryTimes) -> dict[tuple[str, int], int]:
        """Put the consumer back to the batch's first offsets: the records will be consumed again.

        Returns where each partition was put back to.
        """
        batch = self.batch
        retry_times.keep(batch.decided_at)
        firsts = {**batch.fetched, **batch.first_offsets}
        for key, offset in batch.put_back().items():
            firsts[key] = min(firsts.get(key, offset), offset)
        for (topic, partition), offset in firsts.items():
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(topic, partition, offset))
        return firsts

    def apply(
        self, stores: Mapping[int, PartitionStore], cache: ProcessCache, timers: TimerService
    ) -> dict[int, int]:
        """Step 5: the committed batch goes to the stores (one WriteBatch each) and the cache.

        The deferred partitions are put back to their first deferred record. Returns the active
        process count of each store written.
        """
        batch = self.batch
        writes: dict[int, StoreWrite] = {}
        for correlation_id, change in batch.changes.items():
            located = batch.journal_offsets.get(change.entry_id)
            write = writes.setdefault(change.partition, StoreWrite())
            if located is not None:
                change.after.journal_offset = located[1]
            # Encoded once, for the journal entry: the store keeps the same bytes.
            encoded = None
            if located is not None and change.record is not None:
                encoded = stored_bytes(change.record, located[1])
            stage_change(write, change.before, change.after, encoded)
            timers.settle(
                t for t in (change.before.timers if change.before else {}) if t not in change.after.timers
            )
            cache.remember(correlation_id, change.partition, change.after, change.definition)
        for entry_id, (partition, offset) in batch.journal_offsets.items():
            writes.setdefault(partition, StoreWrite()).advance(offset, entry_id)
        active: dict[int, int] = {}
        for partition, write in writes.items():
            store = stores.get(partition)
            if store is not None:
                store.write(write)
                active[partition] = store.active
        timers.mark_fired(batch.fired)
        for (topic, partition), offset in batch.put_back().items():
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(topic, partition, offset))
        return active
