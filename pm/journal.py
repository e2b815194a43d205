"""The journal topic: reading it back (per partition, to its end). The fold itself is `pm.fold` (pure).

Every name of `pm.fold` is re-exported here for the modules that read and fold together.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from pm.codec import decode
from pm.config import Config
from pm.events import JournalEntry
from pm.fold import (
    JOURNAL_TOPIC,
    MAX_PROCESSED,
    JournalError,
    JournalRecord,
    Outcome,
    ProcessRecord,
    Verifier,
    advance,
    build_entry,
    decision_time,
    evaluate,
    fold_entry,
    stored_bytes,
    stored_form,
)
from pm.kafka import make_consumer

__all__ = [
    "JOURNAL_TOPIC",
    "MAX_PROCESSED",
    "JournalRecord",
    "JournalError",
    "JournalIdle",
    "Outcome",
    "ProcessRecord",
    "Verifier",
    "iter_journal",
    "iter_journal_raw",
    "iter_journal_batches",
    "JournalReader",
    "RawJournalRecord",
    "decode_entry",
    "stored_bytes",
    "stored_form",
    "journal_partitions",
    "build_entry",
    "evaluate",
    "advance",
    "fold_entry",
    "decision_time",
]


class JournalIdle(JournalError):
    """Nothing arrived for `idle_timeout` (an open transaction, or an offset past the end on some brokers)."""


# ---------------------------------------------------------------- reading


def journal_partitions(config: Config, timeout: float = 10.0) -> list[int]:
    consumer = make_consumer(config, "journal-meta", f"{config.topic_prefix}pm-journal-meta")
    try:
        metadata = consumer.list_topics(config.topic(JOURNAL_TOPIC), timeout=timeout)
        topic = metadata.topics.get(config.topic(JOURNAL_TOPIC))
        if topic is None or topic.error is not None:
            raise JournalError(
                f"journal topic {config.topic(JOURNAL_TOPIC)} is missing: run `pm topics apply`"
            )
        return sorted(topic.partitions)
    finally:
        consumer.close()


class RawJournalRecord(NamedTuple):
    partition: int
    offset: int
    key: bytes | None  # the correlation ID, as the PM keys every entry
    value: bytes  # the encoded JournalEntry


def iter_journal_raw(
    config: Config,
    partitions: list[int] | None = None,
    start: int | Mapping[int, int] | None = None,
    *,
    idle_timeout: float = 30.0,
    reset: str = "earliest",
) -> Iterator[RawJournalRecord]:
    """Every journal record of `partitions` (all when None) from `start` to the end, undecoded.

    One at a time; `iter_journal_batches` gives them as they are fetched (what the arguments mean).
    """
    for batch in iter_journal_batches(config, partitions, start, idle_timeout=idle_timeout, reset=reset):
        yield from batch


def iter_journal_batches(
    config: Config,
    partitions: list[int] | None = None,
    start: int | Mapping[int, int] | None = None,
    *,
    idle_timeout: float = 30.0,
    reset: str = "earliest",
) -> Iterator[list[RawJournalRecord]]:
    """Every journal record of `partitions` (all when None) from `start` to the end, undecoded, in
    the batches the consumer hands over (up to 1,000 records; a rebuild folds per batch).

    `start`: None = the beginning, an int = that offset on every partition, a mapping =
    per-partition offsets. "The end" is the partition EOF event (`enable.partition.eof`),
    never a watermark fetched up front (wrong on some brokers). `idle_timeout` bounds the
    wait when nothing arrives (e.g. an open transaction holds read_committed back) with
    `JournalIdle`. `reset="error"` makes a start offset past the end an error instead of a
    silent restart from the beginning (Kafka reports it; some brokers just send nothing,
    which the idle timeout catches).
    """
    wanted = journal_partitions(config) if partitions is None else sorted(partitions)
    if wanted:
        yield from JournalReader(config, wanted, start, idle_timeout=idle_timeout, reset=reset).batches()


class JournalReader:
    """Reads journal partitions to their end (`iter_journal_batches`); made, it fetches already.

    Its consumer is created and assigned in the constructor, so librdkafka starts fetching in its
    own threads: a catch-up makes the next partition's reader before it folds this one, and the first
    batch (~150 ms on the local broker) is there when it gets to it. `batches()` closes the consumer
    when it ends; `close()` one that is not read.
    """

    def __init__(
        self,
        config: Config,
        partitions: list[int],
        start: int | Mapping[int, int] | None = None,
        *,
        idle_timeout: float = 30.0,
        reset: str = "earliest",
    ) -> None:
        self.topic = config.topic(JOURNAL_TOPIC)
        self.partitions = sorted(partitions)
        self.idle_timeout = idle_timeout

        # "From the beginning" is offset 0 when an out-of-range start resets to the earliest record (a
        # log that no longer starts at 0 is read from its start all the same): on the local broker the
        # first batch then comes after ~150 ms instead of the ~650 ms it takes from OFFSET_BEGINNING.
        beginning = 0 if reset == "earliest" else OFFSET_BEGINNING

        def offset_for(p: int) -> int:
            if start is None:
                return beginning
            if isinstance(start, int):
                return start
            return int(start.get(p, beginning))

        self._consumer: Consumer | None = make_consumer(
            config,
            "journal-reader",
            f"{config.topic_prefix}pm-journal-reader-{uuid.uuid4().hex[:8]}",
            **{
                "enable.partition.eof": True,
                "auto.offset.reset": reset,
                # A catch-up reads far faster than it folds, so the prefetch queue fills (64 MiB); librdkafka
                # then postpones the partition's next fetch by this long (default 1 s) and the fold starves.
                "fetch.queue.backoff.ms": 10,
            },
        )
        try:
            self._consumer.assign([TopicPartition(self.topic, p, offset_for(p)) for p in self.partitions])
        except KafkaException as exc:
            self.close()
            raise JournalError(f"reading {self.topic}: {exc}") from exc

    def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()

    def batches(self) -> Iterator[list[RawJournalRecord]]:
        """The records to the end of every partition, in the batches the consumer hands over."""
        consumer, topic = self._consumer, self.topic
        if consumer is None:
            raise JournalError(f"reading {topic}: this reader was closed")
        # One partition read (a catch-up): every record's partition is known, no call per record for it.
        single = self.partitions[0] if len(self.partitions) == 1 else None
        try:
            pending = set(self.partitions)
            idle_since = time.monotonic()
            while pending:
                # What is fetched already, else wait for the first record: consume(n, timeout) would wait the
                # whole timeout whenever fewer than n arrive (200 ms per catch-up of a short partition).
                messages = consumer.consume(num_messages=1000, timeout=0)
                if not messages:
                    first = consumer.poll(0.2)
                    messages = [] if first is None else [first, *consumer.consume(num_messages=999, timeout=0)]
                if not messages:
                    if time.monotonic() - idle_since > self.idle_timeout:
                        raise JournalIdle(
                            f"reading {topic} partitions {sorted(pending)}: no end of partition within "
                            f"{self.idle_timeout:.0f}s (an open transaction may hold read_committed back)"
                        )
                    continue
                idle_since = time.monotonic()
                batch: list[RawJournalRecord] = []
                append = batch.append
                record = tuple.__new__  # RawJournalRecord(...) without its Python-level __new__: ~0.5 us a record
                for message in messages:
                    error = message.error()
                    if error is not None:  # checked first: an error event's value is its message
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(message.partition())
                            continue
                        raise JournalError(f"reading {topic}: {error}")
                    value = message.value()
                    if value is not None:
                        partition = message.partition() if single is None else single
                        append(record(RawJournalRecord, (partition, message.offset(), message.key(), value)))
                if batch:
                    yield batch
        except KafkaException as exc:
            raise JournalError(f"reading {topic}: {exc}") from exc
        finally:
            self.close()


def decode_entry(record: RawJournalRecord, topic: str = JOURNAL_TOPIC) -> JournalEntry:
    """The JournalEntry a raw journal record holds (JournalError for another event, CodecError if corrupt)."""
    entry = decode(record.value)
    if not isinstance(entry, JournalEntry):
        raise JournalError(f"{topic}[{record.partition}]@{record.offset} holds a {entry.type}")
    return entry


def iter_journal(
    config: Config,
    partitions: list[int] | None = None,
    start: int | Mapping[int, int] | None = None,
    *,
    idle_timeout: float = 30.0,
    decode_events: bool = True,
    reset: str = "earliest",
) -> Iterator[JournalRecord]:
    """`iter_journal_raw`, each record decoded: the entry, and its input event unless `decode_events` is off."""
    topic = config.topic(JOURNAL_TOPIC)
    for raw in iter_journal_raw(config, partitions, start, idle_timeout=idle_timeout, reset=reset):
        entry = decode_entry(raw, topic)
        event = decode(entry.payload.event) if decode_events else entry
        yield JournalRecord(raw.partition, raw.offset, entry, event)
