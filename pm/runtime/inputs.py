"""One input record of a batch: decode, integrity, dedup, route to its process, decide, produce.

Every input ends in exactly one of: consumed and journaled (with its commands and published
events), consumed as a duplicate (outputs of an unconfirmed entry produced again), consumed and
dead-lettered (`pm.dlq`), or deferred (backpressure: put back with the rest of its partition).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException, Message

from pm import telemetry
from pm.codec import CodecError, decode, encode
from pm.config import Config
from pm.dlq import DLQ_TOPIC, dead_letter
from pm.errors import PmError
from pm.events import ApprovalDecided, Event, JournalEntry, OperatorCommand
from pm.fold import operate, park_refusal
from pm.integrity import record_problem, shown
from pm.journal import JOURNAL_TOPIC, Outcome, ProcessRecord, Verifier, advance, build_entry, evaluate
from pm.process import InvalidInput, ProcessDefinition, Status
from pm.registry import Registry
from pm.runtime.backpressure import Backpressure
from pm.runtime.checkpoint import RECORD_ERRORS, Batch, Change, Checkpoint
from pm.runtime.poison import PoisonIsolation
from pm.runtime.state import Position, ProcessCache, RetryTimes, UnconfirmedOutputs, read_record
from pm.store import PartitionStore

# What a journal entry adds around the input it embeds (envelope, positions, timers, reason).
ENTRY_OVERHEAD = 16 * 1024
RECORD_MARGIN = 4 * 1024  # an entry carries its record only this far below the record limit
# Inputs only the PM writes (in its transactions): commit markers leave offset gaps there on Kafka,
# and one writer is never skipped, so they are not checked for gaps (see InputHandler._skipped).
SINGLE_WRITER_INPUTS = frozenset({"pm.timers"})


class RecordTooLarge(ValueError):
    """A decision whose journal entry or outputs would be over the record limit."""


class InputHandler:
    """Handles the input records of a batch into its checkpoint (`handle`).

    `stores` is the manager's (live) map of open partition stores; `partitions` maps each physical
    input topic to the partition count its records are placed by (set by `ProcessManager.start`).
    """

    def __init__(
        self,
        config: Config,
        registry: Registry,
        stores: Mapping[int, PartitionStore],
        cache: ProcessCache,
        unconfirmed: UnconfirmedOutputs,
        retry_times: RetryTimes,
        backpressure: Backpressure,
        *,
        verifier: Verifier | None,
        log: TextIO,
    ) -> None:
        self.config = config
        self.registry = registry
        self.stores = stores
        self.cache = cache
        self.unconfirmed = unconfirmed
        self.retry_times = retry_times
        self.backpressure = backpressure
        self.verifier = verifier
        self.log = log
        self.partitions: dict[str, int] = {}
        self.isolation = PoisonIsolation(log)
        # Per input partition: the offset the next record should have, and a gap already read again.
        self.expected: dict[tuple[str, int], int] = {}
        self.unreturned: dict[tuple[str, int], int] = {}

    def handle(self, checkpoint: Checkpoint, message: Message) -> None:
        batch = checkpoint.batch
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            print(f"pm: consumer: {error}", file=self.log, flush=True)
            return
        physical = str(message.topic())
        partition = int(message.partition() or 0)
        offset = int(message.offset() or 0)
        if (physical, partition) in batch.deferred or (physical, partition) in batch.gaps:
            return  # this partition is put back for the rest of the batch
        topic = self.config.logical_topic(physical)
        if self._skipped(batch, physical, partition, offset, topic):
            return
        self.expected[(physical, partition)] = offset + 1
        raw = message.value()
        if raw is None:
            batch.consumed(physical, partition, offset)
            self._dlq(checkpoint, message, "record has no value", "EmptyRecord")
            return
        if len(raw) > self.input_limit:
            # Its journal entry embeds it: past this size the entry itself could not be produced.
            batch.consumed(physical, partition, offset)
            reason = f"record of {len(raw)} bytes is over the {self.input_limit} bytes an input may have"
            self._dlq(checkpoint, message, reason, "RecordTooLarge")
            return
        try:
            event = decode(raw)
        except CodecError as exc:
            batch.consumed(physical, partition, offset)
            self._dlq(checkpoint, message, str(exc), type(exc).__name__)
            return
        correlation_id = event.correlation_id
        # The key decides the partition, the partition decides the store: a record not keyed by its
        # correlation ID, or not where that key hashes, would split its process. Refuse it.
        problem = record_problem(message.key(), partition, self._partition_count(physical), correlation_id)
        if problem is not None:
            batch.consumed(physical, partition, offset)
            self._dlq(checkpoint, message, problem[1], problem[0])
            return
        before, definition = self._lookup(checkpoint, correlation_id, partition)
        if before is not None and before.seen(event.event_id):
            batch.consumed(physical, partition, offset)
            batch.duplicates += 1
            self._reemit(checkpoint, (topic, partition, offset), correlation_id)
            telemetry.events_processed().add(1, {"pm.event_type": event.type, "pm.outcome": "duplicate"})
            return
        if before is None:
            starter = self.registry.starter(event)
            if starter is None:
                batch.consumed(physical, partition, offset)
                self._dlq(
                    checkpoint,
                    message,
                    f"no process with correlation ID {shown(correlation_id)}, and a {event.type} does not start one",
                    "UnknownProcess",
                )
                return
            if self.backpressure.defers(physical, batch.active_delta):
                # Backpressure: put this record (and the rest of its partition) back; resume later.
                batch.deferred[(physical, partition)] = offset
                return
            definition = starter
            try:
                admit = getattr(definition, "admit", None)  # optional: live start events only
                if admit is not None:
                    admit(event)
                state = definition.initial_state(event)
            except InvalidInput as exc:  # the definition refuses this start event: not a bug
                batch.consumed(physical, partition, offset)
                self._dlq(checkpoint, message, f"{definition.name}: {exc}", "InvalidInput")
                return
            except Exception as exc:  # a definition bug on a start event: nothing to fail yet, so DLQ it
                batch.consumed(physical, partition, offset)
                self._dlq(checkpoint, message, f"{definition.name}.initial_state: {exc}", type(exc).__name__)
                return
        else:
            assert definition is not None
            state = before.state
            # A start-type input for a process that exists (a follow-up in a conversation) passes
            # the same live admission checks as the one that opened it.
            admit = getattr(definition, "admit", None)
            if admit is not None and definition.starts(event):
                try:
                    admit(event)
                except InvalidInput as exc:
                    batch.consumed(physical, partition, offset)
                    self._dlq(checkpoint, message, f"{definition.name}: {exc}", "InvalidInput")
                    return
        position = (physical, partition, offset)
        batch.consumed(physical, partition, offset)
        dead = self.isolation.dead.get(position)
        if dead is not None:  # not even its failure could be journaled (see pm.runtime.poison)
            self._dlq(checkpoint, message, dead, "Unproducible")
            return
        quarantine = before.quarantine if before is not None else None
        if quarantine is not None and not isinstance(event, OperatorCommand):
            refusal = park_refusal(quarantine, raw)
            if refusal is not None:
                self._dlq(checkpoint, message, f"not parked: {refusal}", "ParkingFull")
                return
        now = self.retry_times.take(position, batch.now)
        batch.decided_at[position] = now
        with self._span(message, event, topic, partition, offset):
            started = time.perf_counter()
            outcome = self._outcome(definition, before, state, event, raw, position, topic, now)
            telemetry.decision_latency().record(
                time.perf_counter() - started, {"pm.process": definition.name, "pm.event_type": event.type}
            )
            after, entry = self._journal(
                checkpoint, definition, before, state, event, raw, topic, position, outcome, now
            )
            if outcome.outcome == "applied" and outcome.parked:
                after, entry = self._decide_parked(
                    checkpoint, definition, after, entry, outcome.parked, position, now
                )
        previous = batch.changes.get(correlation_id)
        batch.changes[correlation_id] = Change(
            partition=partition,
            before=previous.before if previous is not None else before,
            after=after,
            definition=definition,
            entry_id=entry.event_id,
            record=entry.payload.record,
        )
        batch.active_delta += int(after.active) - int(before.active if before is not None else False)
        batch.handled += 1

    def _journal(
        self,
        checkpoint: Checkpoint,
        definition: ProcessDefinition[Any],
        before: ProcessRecord | None,
        state: Any,
        event: Event,
        raw: bytes,
        topic: str,
        position: Position,
        outcome: Outcome,
        now: datetime,
    ) -> tuple[ProcessRecord, JournalEntry]:
        """Journal one decided input and produce its outputs; a decision that cannot be recorded fails its process."""
        _, partition, offset = position
        try:
            after, entry = self._entry(
                definition, before, state, event, raw, topic, partition, offset, outcome, now
            )
            entry, entry_bytes = self._encoded(entry)
            oversize = self._oversize(entry_bytes, entry)
            if oversize is not None:  # Kafka would refuse it, and the batch would abort forever
                raise RecordTooLarge(oversize)
        except (
            Exception
        ) as exc:  # e.g. outputs that break their schema or the size limit: fail only this process
            outcome = Outcome("failed", f"{type(exc).__name__}: {exc}", None)
            after, entry = self._entry(
                definition, before, state, event, raw, topic, partition, offset, outcome, now
            )
            entry, entry_bytes = self._encoded(entry)
        telemetry.events_processed().add(1, {"pm.event_type": event.type, "pm.outcome": outcome.outcome})
        _count_transition(before.status if before is not None else None, after.status)
        try:
            self._produce_outputs(checkpoint, position, event.correlation_id, entry, entry_bytes, outcome)
        except KafkaException as exc:  # produce() refused a record: name this input, abort the batch
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in RECORD_ERRORS:
                checkpoint.batch.failed_inputs.setdefault(
                    position, f"an output could not be produced: {error.str()}"
                )
            raise
        return after, entry

    def _decide_parked(
        self,
        checkpoint: Checkpoint,
        definition: ProcessDefinition[Any],
        record: ProcessRecord,
        entry: JournalEntry,
        parked: tuple[tuple[str, bytes], ...],
        position: Position,
        now: datetime,
    ) -> tuple[ProcessRecord, JournalEntry]:
        """A release: decide the parked inputs now, in the order they came, in this same transaction.

        Each gets its own journal entry, recorded at the release's position (topic and offset), so a
        fold re-decides them exactly as here; an input already applied (a parked duplicate) is skipped.
        """
        release_topic = self.config.logical_topic(position[0])
        for _, raw in parked:
            try:
                event = decode(raw)
            except CodecError as exc:  # decoded when it was parked; only a removed schema gets here
                print(
                    f"pm: parked input of {record.correlation_id} no longer decodes, left: {exc}",
                    file=self.log,
                )
                continue
            if record.seen(event.event_id):
                continue
            verifier = self.verifier if isinstance(event, ApprovalDecided) else None
            outcome = evaluate(definition, record.state, event, verifier, now=now)
            record, entry = self._journal(
                checkpoint,
                definition,
                record,
                record.state,
                event,
                raw,
                release_topic,
                position,
                outcome,
                now,
            )
            checkpoint.batch.handled += 1
        return record, entry

    def forget(self, partitions: list[int]) -> None:
        """Assigned afresh or revoked: where these partitions stand is not known any more."""
        for tracked in (self.expected, self.unreturned):
            for key in [k for k in tracked if k[1] in partitions]:
                del tracked[key]

    def _skipped(self, batch: Batch, physical: str, partition: int, offset: int, topic: str) -> bool:
        """True when the broker returned this record but not the ones before it: read them again first.

        Offsets of a partition are consecutive unless a transaction marker (or compaction) takes
        one. The local broker (Tansu) can also answer a fetch with a later producer's batch while an
        earlier producer's batch is reserved but not yet stored (partitions with several writers:
        results of five step consumers, start events from several upstreams); committing past it would lose
        those records for good (bench/fetch_skip.py). So the partition is put back to the expected
        offset once; if the broker starts at this record again, the gap is real and accepted.
        """
        key = (physical, partition)
        expected = self.expected.get(key)
        if expected is None or offset <= expected or topic in SINGLE_WRITER_INPUTS:
            self.unreturned.pop(key, None)
            return False
        if self.unreturned.get(key) == offset:  # read again: the broker has nothing in between
            del self.unreturned[key]
            return False
        self.unreturned[key] = offset
        batch.gaps[key] = expected
        print(
            f"pm: {physical}/{partition}: got offset {offset}, expected {expected}: reading from {expected} again",
            file=self.log,
            flush=True,
        )
        return True

    def _outcome(
        self,
        definition: ProcessDefinition[Any],
        before: ProcessRecord | None,
        state: Any,
        event: Event,
        raw: bytes,
        position: Position,
        topic: str,
        now: datetime,
    ) -> Outcome:
        """What becomes of this input: decided, or parked / quarantined / failed by the runtime."""
        poison = self.isolation.poison.get(position)
        if poison is not None and not isinstance(event, OperatorCommand):
            return Outcome("quarantined", f"quarantined: {poison}", None, park=(topic, bytes(raw)))
        if before is not None and before.quarantine is not None and not isinstance(event, OperatorCommand):
            return Outcome("parked", "parked: the process is quarantined", None, park=(topic, bytes(raw)))
        if isinstance(event, OperatorCommand):
            assert before is not None  # an operator command never starts a process (no starter takes it)
            if (
                poison is not None
            ):  # never parked: a release that cannot commit leaves the quarantine as it is
                return Outcome("rejected", f"could not be committed: {poison}", None)
            return operate(definition, before, event, now)
        failing = self.isolation.failing.get(position)
        if failing is not None:
            return Outcome("failed", failing, None)
        verifier = self.verifier if isinstance(event, ApprovalDecided) else None
        return evaluate(definition, state, event, verifier, now=now)

    def _produce_outputs(
        self,
        checkpoint: Checkpoint,
        position: Position,
        correlation_id: str,
        entry: JournalEntry,
        entry_bytes: bytes,
        outcome: Outcome,
    ) -> None:
        """The journal entry, then the decision's outputs."""
        batch = checkpoint.batch
        partition = position[1]
        headers = telemetry.inject([])
        checkpoint.produce(
            self.config.topic(JOURNAL_TOPIC),
            entry_bytes,
            key=correlation_id,
            partition=partition,  # the journal partition is the input partition (co-partitioned)
            headers=headers,
            on_delivery=batch.delivery_for(position, batch.on_journal_delivery(entry.event_id)),
        )
        if outcome.outcome != "applied" or outcome.decision is None:
            return
        # The entry already holds every output encoded (build_entry): send those bytes, not a
        # second encoding (encode was ~1/6 of the PM's time, half of it spent twice).
        outputs = (*outcome.decision.commands, *outcome.decision.publish)
        encoded = (*entry.payload.commands, *entry.payload.published)
        for output, value in zip(outputs, encoded, strict=True):
            checkpoint.produce(
                self.config.topic(output.topic),
                value,
                key=correlation_id,
                headers=headers,
                on_delivery=batch.delivery_for(position),
            )

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
            record=after.snapshot(),
        )
        return after, entry

    def _reemit(self, checkpoint: Checkpoint, position: Position, correlation_id: str) -> None:
        """Produce again the outputs of an input whose journal entry exists but whose offset was never committed.

        The same input at the same position comes back only when the transaction that journaled it
        did not commit (offsets and journal commit together). On Apache Kafka such an entry is
        aborted and invisible, so this never triggers; on a broker that shows aborted records to
        read_committed readers (tansu.md) the entry was folded at catch-up while some of its
        commands may never have been written. Re-producing them is safe: step consumers dedupe by
        command ID and the PM dedupes results by event ID.
        """
        outputs = self.unconfirmed.pop(position)
        for value in outputs:
            checkpoint.produce(
                self.config.topic(decode(value).topic),
                value,
                key=correlation_id,
                headers=telemetry.inject([]),
                on_delivery=checkpoint.batch.on_delivery,
            )
        if outputs:
            checkpoint.batch.reemitted += len(outputs)

    def _lookup(
        self, checkpoint: Checkpoint, correlation_id: str, partition: int
    ) -> tuple[ProcessRecord | None, ProcessDefinition[Any] | None]:
        """The process as of this point of the batch: batch overlay, then cache, then store."""
        change = checkpoint.batch.changes.get(correlation_id)
        if change is not None:
            return change.after, change.definition
        cached = self.cache.get(correlation_id)
        if cached is not None:
            return cached
        store = self.stores.get(partition)
        if store is None:
            raise PmError(f"no store open for partition {partition} (not assigned?)")
        found = read_record(self.registry, store, correlation_id)
        if found is None:
            return None, None
        record, definition = found
        self.cache.remember(correlation_id, partition, record, definition)
        return record, definition

    def _partition_count(self, physical: str) -> int:
        count = self.partitions.get(physical)
        if count is None:  # only subscribed topics are consumed, and start() knows them all
            raise PmError(f"record from {physical}, which is not a process manager input")
        return count

    def _encoded(self, entry: JournalEntry) -> tuple[JournalEntry, bytes]:
        """The entry and its bytes; without the record it carries when that would pass the record limit.

        The record is only a shortcut for rebuilds (a fold re-decides an entry without one). The
        margin leaves room for what the client adds to a record's value (key, headers, framing).
        """
        entry_bytes = encode(entry)
        if len(entry_bytes) > self.config.max_record_bytes - RECORD_MARGIN and entry.payload.record is not None:
            entry = entry.model_copy(update={"payload": entry.payload.model_copy(update={"record": None})})
            entry_bytes = encode(entry)
        return entry, entry_bytes

    def _oversize(self, entry_bytes: bytes, entry: JournalEntry) -> str | None:
        """Why this entry or one of its outputs is over the record limit, or None."""
        limit = self.config.max_record_bytes
        if len(entry_bytes) > limit:
            return f"its journal entry would be {len(entry_bytes)} bytes, over the {limit} bytes a record may have"
        for value in (*entry.payload.commands, *entry.payload.published):
            if len(value) > limit:
                return f"an output would be {len(value)} bytes, over the {limit} bytes a record may have"
        return None

    @property
    def input_limit(self) -> int:
        """The largest input: a record, less what its journal entry adds around it."""
        return max(0, self.config.max_record_bytes - ENTRY_OVERHEAD)

    def _dlq(self, checkpoint: Checkpoint, message: Message, reason: str, error_type: str) -> None:
        physical = str(message.topic())
        topic = self.config.logical_topic(physical)
        partition = int(message.partition() or 0)
        offset = int(message.offset() or 0)
        key, value = message.key(), message.value()
        # The dead letter carries the record; one too large to carry is described, not copied.
        if value is not None and len(value) + len(key or b"") > self.input_limit // 2:
            reason, value = f"{reason} (value of {len(value)} bytes left out of the dead letter)", None
        if key is not None and len(key) > self.input_limit // 4:
            reason, key = f"{reason} (key of {len(key)} bytes cut)", key[:1024]
        record, headers = dead_letter(
            topic,
            partition,
            offset,
            key,
            value,
            reason=reason,
            error_type=error_type,
            failed_by="pm",
            now=datetime.now(UTC),
        )
        checkpoint.produce(
            self.config.topic(DLQ_TOPIC),
            encode(record),
            key=key,
            headers=headers,
            on_delivery=checkpoint.batch.on_delivery,
        )
        checkpoint.batch.dlq += 1
        telemetry.dlq_records().add(1, {"messaging.destination.name": topic, "error.type": error_type})
        print(
            f"pm: {physical}/{partition}/{offset} -> {self.config.topic(DLQ_TOPIC)}: {error_type}: {reason}",
            file=self.log,
            flush=True,
        )

    def _span(
        self, message: Message, event: Event, topic: str, partition: int, offset: int
    ) -> AbstractContextManager[object]:
        """The span of one input's handling: child of the producer's context carried in the headers.

        Nothing at all without tracing: its attributes alone would cost ~8 % of the PM's CPU.
        """
        return telemetry.span(
            f"pm.handle {event.type}",
            lambda: {**telemetry.event_attributes(event), **telemetry.record_attributes(topic, partition, offset)},
            context=telemetry.extract(message.headers()),
        )


def _count_transition(old: str | None, new: str) -> None:
    """Keep the active / waiting-for-approval gauges of this instance in step with status changes."""
    if old == new:
        return
    for status, delta in ((old, -1), (new, 1)):
        if status == Status.RUNNING:
            telemetry.active_processes().add(delta)
        elif status == Status.WAITING_FOR_APPROVAL:
            telemetry.waiting_processes().add(delta)
        elif status == Status.QUARANTINED:
            telemetry.quarantined_processes().add(delta)
