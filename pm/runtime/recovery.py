"""Catch-up of one partition on assignment: open its store, check it belongs to the journal, fold the rest.

Modelled on Quix Streams' state recovery (one small object per partition). Before any input of a
partition is handled, its store is brought to the end of its journal partition: the entries
committed after the store's last write (a crash between commit and store write, or another
instance owning the partition meanwhile) are folded in. Their outputs are kept for re-emission
(`UnconfirmedOutputs`) in case their inputs come back.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pm.codec import SchemaRegistry, decode, read_paths
from pm.codec import registry as codec_registry
from pm.config import Config
from pm.events import JournalEntry
from pm.heap import trim_heap
from pm.journal import (
    JOURNAL_TOPIC,
    JournalError,
    JournalIdle,
    JournalReader,
    ProcessRecord,
    RawJournalRecord,
    decode_entry,
    fold_entry,
    stored_bytes,
    stored_form,
)
from pm.kafka import make_admin
from pm.process import ACTIVE
from pm.registry import Registry
from pm.runtime.state import UnconfirmedOutputs, stage_stored, stored_active, stored_timers
from pm.store import PartitionStore, StoreError, StoreWrite, store_path

# A catch-up of one partition this long leaves enough freed heap to be worth returning (checked per
# partition: a rebuild of many small partitions does not trim, and does not need to).
TRIM_AFTER_ENTRIES = 10_000
# Entries of a partition's tail whose outputs are kept for re-emission: an input journaled but not
# committed sits in the last transaction or two before a crash (500 inputs each by default).
UNCONFIRMED_TAIL = 2000
# Journal records folded into one store write; a process with several entries in one window costs one.
FOLD_WINDOW = 5000
FOLD_WINDOW_BYTES = 64 << 20  # and at most this much journal held at once (entries can be ~1 MB)


# What a fold needs of a process's last entry in a window: read without decoding the rest (`read_paths`).
_LAST_ENTRY_PATHS = ("event_id", "correlation_id", "payload.status", "payload.record")
# What `UnconfirmedOutputs.remember` needs of an entry in the journal's tail.
_OUTPUT_PATHS = tuple(
    f"payload.{name}"
    for name in ("outcome", "input_topic", "input_partition", "input_offset", "commands", "published")
)


def _entry_paths(record: RawJournalRecord, paths: tuple[str, ...], schemas: SchemaRegistry) -> dict[str, Any]:
    """A few fields of a journal entry (`read_paths`: no validation; a carried record is checked by
    `stored_form`)."""
    type_name, fields = read_paths(record.value, paths, schemas)
    if type_name != JournalEntry.TYPE:
        raise JournalError(f"journal record {record.partition}@{record.offset} holds a {type_name}")
    return fields


def _outputs(record: RawJournalRecord, schemas: SchemaRegistry) -> dict[str, Any]:
    """The entry's payload fields `UnconfirmedOutputs.remember` reads."""
    fields = _entry_paths(record, _OUTPUT_PATHS, schemas)
    return {path.removeprefix("payload."): value for path, value in fields.items()}


class WindowFold:
    """Folds a run of consecutive journal records of one partition into one store write.

    Per process, only its last entry in the window counts when that entry carries the record
    (`JournalEntry.payload.record`): the record is taken as the live run stored it, nothing is
    re-decided. A process whose last entry has no record (entries before schema version 3, a
    quarantined process, a record too large to carry) is folded the old way from its latest entry
    in the window that has one (else from the store), re-deciding each input (`fold_entry`).
    """

    def __init__(self, registry: Registry, store: PartitionStore, window: list[RawJournalRecord]) -> None:
        self.registry = registry
        self.store = store
        self.window = window
        self._entries: dict[int, JournalEntry] = {}
        # Grouped by the raw key first (a process has several records in a window): one decode per process.
        by_key: dict[bytes | None, list[int]] = {}
        for index, record in enumerate(window):
            indices = by_key.get(record.key)
            if indices is None:
                by_key[record.key] = [index]
            else:
                indices.append(index)
        self.positions: dict[str, list[int]] = {}
        merged: set[str] = set()  # processes met under two keys (a keyless record): sorted back below
        for key, indices in by_key.items():
            named = (
                [(key.decode(), indices)]
                if key is not None
                else [(self._entry(i).correlation_id, [i]) for i in indices]
            )
            for correlation_id, found in named:
                known = self.positions.get(correlation_id)
                if known is None:
                    self.positions[correlation_id] = found
                else:
                    known.extend(found)
                    merged.add(correlation_id)
        for correlation_id in merged:
            self.positions[correlation_id].sort()  # journal order: the last index is the latest entry

    def _entry(self, index: int) -> JournalEntry:
        entry = self._entries.get(index)
        if entry is None:
            entry = self._entries[index] = decode_entry(self.window[index])
        return entry

    def write(self) -> StoreWrite:
        write = StoreWrite()
        last_event_id = ""
        olds = self.store.get_records(list(self.positions))
        schemas = codec_registry()
        for (correlation_id, indices), old in zip(self.positions.items(), olds, strict=True):
            last = _entry_paths(self.window[indices[-1]], _LAST_ENTRY_PATHS, schemas)
            if last["correlation_id"] != correlation_id:
                record = self.window[indices[-1]]
                raise JournalError(
                    f"journal record {record.partition}@{record.offset} is keyed {correlation_id!r} but records "
                    f"process {last['correlation_id']!r}: it was not written by the process manager"
                )
            if indices[-1] == len(self.window) - 1:
                last_event_id = str(last["event_id"])
            encoded: dict[str, Any] | bytes
            carried = last["payload.record"]
            offset = self.window[indices[-1]].offset
            new: dict[str, Any] | None
            if carried is not None and last["payload.status"] not in ACTIVE and carried[:1] == b"{":
                # Ended (most of a journal): no timers and not active (`advance` clears them), so the
                # record is stored as carried, unparsed; it is parsed when the process is next read.
                new, encoded, new_timers = None, stored_bytes(carried, offset), {}
            elif carried is not None:
                new, encoded = stored_form(carried, offset)
                new_timers = stored_timers(new)
            else:
                after = self._refold(correlation_id, indices, old)
                if after is None:
                    continue
                new = encoded = after.to_json()
                new_timers = after.timers
            stage_stored(
                write,
                correlation_id,
                encoded,
                stored_timers(old),
                new_timers,
                int(stored_active(new)) - int(stored_active(old)),
            )
        write.advance(self.window[-1].offset, last_event_id)
        return write

    def _refold(
        self, correlation_id: str, indices: list[int], old: dict[str, Any] | None
    ) -> ProcessRecord | None:
        """Re-decide the process's entries after its latest one in the window that carries its record.

        None when that changes nothing the store holds (every entry re-decided was a duplicate).
        """
        record, rest, from_window = None, indices, False
        for n in range(len(indices) - 2, -1, -1):
            carried = self._entry(indices[n]).payload.record
            if carried is not None:
                stored, _ = stored_form(carried, self.window[indices[n]].offset)
                record = ProcessRecord.from_json(self.registry, correlation_id, stored)[0]
                rest, from_window = indices[n + 1 :], True
                break
        if record is None and old is not None:
            record = ProcessRecord.from_json(self.registry, correlation_id, old)[0]
        changed = from_window
        for index in rest:
            entry = self._entry(index)
            event = decode(entry.payload.event)
            after = fold_entry(self.registry, record, entry, event, self.window[index].offset)
            if after is not None:
                record, changed = after, True
        return record if changed else None


def _past_anchor(
    batch: list[RawJournalRecord], anchor: tuple[int, str]
) -> tuple[list[RawJournalRecord], bool]:
    """The records of `batch` after the anchor (the last one the store folded), and whether it was seen.

    The anchor must still be there, unchanged (`_AnchorMismatch` if another entry holds its offset).
    """
    for index, record in enumerate(batch):
        if record.offset < anchor[0]:
            continue  # before the anchor: already reflected in the store
        found = decode_entry(record).event_id
        if (record.offset, found) != anchor:
            raise _AnchorMismatch(
                f"journal offset {record.offset} holds {found}, the store expected {anchor[1]} at offset {anchor[0]}"
            )
        return batch[index + 1 :], True
    return [], False


def _tail(records: list[RawJournalRecord]) -> list[RawJournalRecord]:
    """The last UNCONFIRMED_TAIL records, fewer if they hold more than FOLD_WINDOW_BYTES (at least one)."""
    tail = records[-UNCONFIRMED_TAIL:]
    size = sum(len(record.value) for record in tail)
    start = 0
    while size > FOLD_WINDOW_BYTES and start < len(tail) - 1:
        size -= len(tail[start].value)
        start += 1
    return tail[start:]


class CatchUpError(StoreError):
    """Reading the journal failed or stalled during catch-up: the store is fine, a restart may succeed."""

    transient = True


class _AnchorMismatch(Exception):
    pass


def journal_topic_id(config: Config) -> str | None:
    """The broker's topic ID (KIP-516) of the journal when it has one: a recreated topic gets a new one."""
    topic = config.topic(JOURNAL_TOPIC)
    try:
        from confluent_kafka import TopicCollection

        admin = make_admin(config, "pm-admin")
        futures = admin.describe_topics(TopicCollection([topic]), request_timeout=10)
        description = futures[topic].result(timeout=10)
        topic_id = str(description.topic_id) if description.topic_id is not None else ""
    except Exception:  # not all brokers/clients support it: the anchor check still applies
        return None
    if not topic_id or set(topic_id.replace("-", "")) <= {"0", "A"}:
        return None
    return topic_id


class PartitionRecovery:
    """Opens the store of journal partition `partition`, caught up to the journal's end (`open`).

    A store that does not belong to the journal (other topic, recreated topic, or its last folded
    entry is not where it says) is refused, or with `rebuild` destroyed and folded from scratch.
    """

    def __init__(
        self,
        config: Config,
        registry: Registry,
        consumer: Consumer,
        partition: int,
        *,
        journal_topic_id: str | None,
        rebuild: bool,
        anchor_timeout: float,
        catch_up_timeout: float,
        unconfirmed: UnconfirmedOutputs,
        log: TextIO,
    ) -> None:
        self.config = config
        self.registry = registry
        self.consumer = consumer  # only for the journal's watermarks
        self.partition = partition
        self.journal_topic_id = journal_topic_id
        self.rebuild = rebuild
        self.anchor_timeout = anchor_timeout
        self.catch_up_timeout = catch_up_timeout
        self.unconfirmed = unconfirmed
        self.log = log
        self._store: PartitionStore | None = None  # prepared, not yet opened
        self._problem: str | None = None  # why the prepared store does not belong to the journal
        self._reader: JournalReader | None = None  # fetching the catch-up since `prepare`
        self._start = 0  # the offset `_reader` starts at
        self.folded = 0  # journal records folded by `open`
        self.from_scratch = False  # whether `open` folded the journal from its start

    def prepare(self) -> None:
        """Open the store and check it; start fetching its journal from the store's position.

        Made before the previous partition's catch-up, so this partition's first batch is fetched
        meanwhile (`JournalReader`). `open` prepares when nobody did; `close` undoes it.
        """
        if self._store is not None:
            return
        store = PartitionStore(store_path(self.config, self.partition), self.partition)
        try:
            self._problem = self._identity_problem(store)
            if self._problem is None:
                self._reader = self._reader_for(store)
        except BaseException:
            store.close()
            raise
        self._store = store

    def close(self) -> None:
        """Release a prepared partition that will not be opened (its store's lock, its reader)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def open(self) -> PartitionStore:
        """The partition's store, caught up to the end of its journal partition."""
        self.prepare()
        store, problem = self._store, self._problem
        assert store is not None
        self._store = None
        path = store.path
        try:
            if problem is None:
                try:
                    self._catch_up(store)
                except _AnchorMismatch as exc:
                    problem = str(exc)
            if problem is not None:
                if not self.rebuild:
                    raise StoreError(
                        f"store {path} does not belong to journal {self.config.topic(JOURNAL_TOPIC)} "
                        f"partition {self.partition} ({problem}): run `pm run pm --rebuild` to rebuild it from "
                        "the journal, or point --state-dir elsewhere"
                    )
                print(f"pm: rebuilding store {path} ({problem})", file=self.log, flush=True)
                store.destroy()
                store = PartitionStore(path, self.partition)
                self._catch_up(store)
        except BaseException:
            store.close()
            raise
        finally:
            if self._reader is not None:  # not read (a refused store): release its consumer
                self._reader.close()
                self._reader = None
        self._claim(store)
        return store

    def _claim(self, store: PartitionStore) -> None:
        """Record the journal the store is built from (checked on every open: `_identity_problem`)."""
        if store.identity is None:
            store.set_identity({"topic": self.config.topic(JOURNAL_TOPIC), "topic_id": self.journal_topic_id})

    def _reader_for(self, store: PartitionStore) -> JournalReader:
        """A reader of the journal partition from where the store stands (the anchor, else offset 0)."""
        anchor = store.anchor
        start = self._start = self._anchor_start(anchor[0]) if anchor is not None else 0
        return JournalReader(
            self.config,
            [self.partition],
            {self.partition: start},
            idle_timeout=self.anchor_timeout if anchor is not None else self.catch_up_timeout,
            reset="error" if anchor is not None else "earliest",
        )

    def _identity_problem(self, store: PartitionStore) -> str | None:
        identity = store.identity
        if identity is None:
            return None if store.anchor is None else "the store has no journal identity"
        if identity.get("topic") != self.config.topic(JOURNAL_TOPIC):
            return f"it was built from topic {identity.get('topic')}"
        stored_id = identity.get("topic_id")
        if stored_id and self.journal_topic_id and stored_id != self.journal_topic_id:
            return f"topic ID {stored_id} recorded, the journal topic now has {self.journal_topic_id}"
        return None

    def _catch_up(self, store: PartitionStore) -> None:
        """Fold the journal partition from the store's position to its end, before any input is handled."""
        partition = self.partition
        anchor = store.anchor
        from_scratch = anchor is None
        if from_scratch:
            # Before the first window: a fold stopped halfway (a kill, an error) leaves a store that the
            # next open recognises as this journal's and goes on with from its anchor.
            self._claim(store)
        # The prepared reader (fetching since `prepare`), else a new one (a store destroyed for a rebuild).
        reader, self._reader = self._reader or self._reader_for(store), None
        start = self._start
        started = time.monotonic()
        window: list[RawJournalRecord] = []
        # The window folded before `window`: with it, the journal's tail is at hand at the end (decoded
        # then for its outputs, `UnconfirmedOutputs`). A window holds FOLD_WINDOW records or
        # FOLD_WINDOW_BYTES, more than the tail's bounds, so the two always cover the tail.
        previous: list[RawJournalRecord] = []
        window_bytes = folded = 0
        anchored = anchor is None
        try:
            for batch in reader.batches():
                if not anchored:
                    assert anchor is not None
                    batch, anchored = _past_anchor(batch, anchor)
                window += batch
                window_bytes += sum([len(record.value) for record in batch])
                if len(window) >= FOLD_WINDOW or window_bytes > FOLD_WINDOW_BYTES:
                    store.write(WindowFold(self.registry, store, window).write())
                    folded += len(window)
                    previous, window, window_bytes = window, [], 0
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
            raise CatchUpError(f"catching up partition {partition}: {exc}") from exc
        except JournalError as exc:
            if not anchored:
                raise _AnchorMismatch(
                    f"the journal has no offset {start} the store reflects ({exc})"
                ) from exc
            raise CatchUpError(f"catching up partition {partition}: {exc}") from exc
        if not anchored:
            raise _AnchorMismatch(
                f"the journal ends before offset {anchor[0] if anchor else 0} the store reflects"
            )
        try:
            # The tail first: once the last window is written, a restart would not read it again.
            schemas = codec_registry()
            outputs = [_outputs(record, schemas) for record in _tail(previous + window)]
            if window:
                store.write(WindowFold(self.registry, store, window).write())
                folded += len(window)
            for payload in outputs:
                self.unconfirmed.remember(payload)
        except JournalError as exc:
            raise CatchUpError(f"catching up partition {partition}: {exc}") from exc
        self.folded += folded
        self.from_scratch = self.from_scratch or from_scratch
        if folded >= TRIM_AFTER_ENTRIES:
            trim_heap()  # the fold's garbage is freed, but glibc keeps the pages: hand them back
        if from_scratch and folded:
            elapsed = time.monotonic() - started
            print(
                f"pm: rebuilt partition {partition} from the journal: {folded} entries in {elapsed:.1f}s",
                file=self.log,
                flush=True,
            )

    def _anchor_start(self, anchor_offset: int) -> int:
        """Where to start reading to find the anchor: the anchor itself, or the last batch when it lies beyond.

        Some brokers answer a fetch past the end with silence instead of an error, and report a
        high watermark below the true end (tansu.md). Reading from min(anchor, high - 1) always
        starts on an existing offset, so the partition EOF arrives and decides: the anchor was
        seen (fine) or not (the store is foreign). The watermark only picks the start, it never
        decides whether we are caught up.
        """
        try:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.config.topic(JOURNAL_TOPIC), self.partition), timeout=10
            )
        except KafkaException:
            return anchor_offset
        if high <= 0:
            return 0
        return max(0, min(anchor_offset, high - 1))
