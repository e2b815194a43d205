"""The PM's local state: one RocksDB (rocksdict) per assigned journal partition.

The journal is the truth; a store is a cache of its fold that survives restarts.
Layout (raw byte keys, JSON values):

- `s/<correlation_id>` -> the process record (definition name/version, state JSON,
  journal offset it reflects, recent input event IDs for dedupe, pending timers)
- `t/<due_ms:8 bytes BE>/<timer_id>` -> a pending timer; big-endian due time makes
  "everything due by now" a prefix scan from `t/` that stops at the first later key. The
  runtime scans it once per assignment: `pm.timers` keeps it in memory from then on, told of
  every change by `write` (`observe_timers`), since a scan seeks over the tombstones of every
  cancelled timer not yet compacted away
- `m/next_offset` -> the next journal offset to fold (everything before is reflected)
- `m/anchor` -> `{offset, event_id}` of the last journal record folded: on open the
  journal must still hold that record at that offset, else the store belongs to
  another journal (topic recreated, broker wiped) and is refused
- `m/identity` -> the journal topic identity seen at creation (topic ID when the
  broker has one)
- `m/active` -> number of processes with status running (backpressure)

Every change of a committed transaction lands in ONE WriteBatch (`StoreWrite`).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic_core import from_json, to_json
from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, WriteBatch

from pm.config import Config
from pm.errors import PmError

__all__ = [
    "PartitionStore",
    "StoreWrite",
    "StoreError",
    "TimerEntry",
    "TimerObserver",
    "store_root",
    "store_path",
    "list_store_paths",
]

_STATE = b"s/"
_TIMER = b"t/"
_NEXT_OFFSET = b"m/next_offset"
_ANCHOR = b"m/anchor"
_IDENTITY = b"m/identity"
_ACTIVE = b"m/active"


class StoreError(PmError, RuntimeError):
    """A store cannot be used as it is (locked, from another journal); the message says what to do."""


def store_root(config: Config) -> Path:
    """Where this prefix's stores live: state_dir/pm/<prefix>/ (`_` for the empty prefix)."""
    return Path(config.state_dir) / "pm" / (config.topic_prefix or "_")


def store_path(config: Config, partition: int) -> Path:
    return store_root(config) / str(partition)


def list_store_paths(config: Config) -> list[tuple[int, Path]]:
    root = store_root(config)
    if not root.is_dir():
        return []
    return sorted((int(p.name), p) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def _dumps(record: dict[str, Any]) -> bytes:
    try:
        return to_json(record)
    except ValueError:  # pydantic-core refuses lone surrogates; json escapes them
        return json.dumps(record, separators=(",", ":")).encode()


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        return dict(from_json(raw))
    except ValueError:  # "\udXXX" escapes json.dumps wrote (stores before pydantic-core)
        return dict(json.loads(raw))


def _timer_key(due_ms: int, timer_id: str) -> bytes:
    return _TIMER + struct.pack(">q", due_ms) + b"/" + timer_id.encode()


@dataclass(frozen=True, slots=True)
class TimerEntry:
    correlation_id: str
    timer_id: str
    name: str
    due_ms: int


class TimerObserver(Protocol):
    """Follows a store's timer index in memory (`pm.timers.DueHeap`)."""

    def timers_changed(
        self, removed: Collection[tuple[int, str]], added: Mapping[tuple[int, str], TimerEntry]
    ) -> None:
        """Called after a `write` committed: the (due_ms, timer_id) keys it removed, then those it added."""


@dataclass
class StoreWrite:
    """The changes of one committed batch for one store, applied atomically by `PartitionStore.write`."""

    records: dict[str, dict[str, Any] | bytes] = field(default_factory=dict)  # bytes: encoded JSON
    timers_added: dict[tuple[int, str], TimerEntry] = field(default_factory=dict)
    timers_removed: set[tuple[int, str]] = field(default_factory=set)
    next_offset: int | None = None
    anchor: tuple[int, str] | None = None
    active_delta: int = 0

    def put_record(self, correlation_id: str, record: dict[str, Any] | bytes) -> None:
        self.records[correlation_id] = record

    def add_timer(self, timer: TimerEntry) -> None:
        key = (timer.due_ms, timer.timer_id)
        self.timers_removed.discard(key)
        self.timers_added[key] = timer

    def remove_timer(self, due_ms: int, timer_id: str) -> None:
        key = (due_ms, timer_id)
        self.timers_added.pop(key, None)
        self.timers_removed.add(key)

    def advance(self, offset: int, event_id: str) -> None:
        """A journal record at `offset` is now reflected."""
        if self.next_offset is None or offset + 1 > self.next_offset:
            self.next_offset = offset + 1
            self.anchor = (offset, event_id)

    @property
    def empty(self) -> bool:
        return not (self.records or self.timers_added or self.timers_removed or self.next_offset is not None)


WRITE_BUFFER_BYTES = 16 << 20  # per memtable


class PartitionStore:
    """One journal partition's RocksDB. Opening takes the RocksDB lock; `close` releases it."""

    def __init__(self, path: Path, partition: int, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.partition = partition
        self.read_only = read_only
        options = Options(raw_mode=True)
        options.create_if_missing(not read_only)
        # RocksDB's 64 MiB memtables (two per store, one store per partition) held ~320 MiB in a PM
        # that had just rebuilt 2M entries; smaller ones bound that at the cost of more, smaller flushes.
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        # Most lookups are of a process not stored yet (a new one, or a rebuild's first window with it):
        # a Bloom filter per file answers those without reading every level's blocks (~1.2 bytes per key).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        try:
            if read_only:
                self._db: Rdict | None = Rdict(str(self.path), options, access_type=AccessType.read_only())
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._db = Rdict(str(self.path), options)
        except Exception as exc:  # rocksdict raises plain Exception for lock/IO errors
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._timer_observers: list[TimerObserver] = []

    @staticmethod
    def exists(path: Path) -> bool:
        """Whether a store was ever opened at `path` (a file check: no RocksDB open)."""
        return (Path(path) / "CURRENT").exists()

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise StoreError(f"store {self.path} is closed")
        return self._db

    # ------------------------------------------------------------ reads

    def get_record(self, correlation_id: str) -> dict[str, Any] | None:
        raw = self.db.get(_STATE + correlation_id.encode())
        return None if raw is None else _loads(raw)

    def get_records(self, correlation_ids: list[str]) -> list[dict[str, Any] | None]:
        """`get_record` of each, in one RocksDB multi-get."""
        found: list[bytes | None] = self.db.get([_STATE + cid.encode() for cid in correlation_ids]) or []
        return [None if raw is None else _loads(raw) for raw in found]

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        it = self.db.iter()
        it.seek(_STATE)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(_STATE):
                break
            yield key[len(_STATE) :].decode(), _loads(it.value())
            it.next()

    def due_timers(self, now_ms: int, limit: int = 1000) -> list[TimerEntry]:
        """Pending timers with due time <= now, earliest first (a range scan on the due index)."""
        found: list[TimerEntry] = []
        it = self.db.iter()
        it.seek(_TIMER)
        while it.valid() and len(found) < limit:
            key = bytes(it.key())
            if not key.startswith(_TIMER):
                break
            (due_ms,) = struct.unpack(">q", key[len(_TIMER) : len(_TIMER) + 8])
            if due_ms > now_ms:
                break
            value = json.loads(it.value())
            found.append(TimerEntry(value["correlation_id"], value["timer_id"], value["name"], due_ms))
            it.next()
        return found

    def timers(self) -> list[TimerEntry]:
        return self.due_timers(2**62, limit=2**31)

    def observe_timers(self, observer: TimerObserver) -> list[TimerEntry]:
        """The timer index now (one scan); `observer` is told of every change `write` makes to it from now on."""
        if not self.observed_by(observer):
            self._timer_observers.append(observer)
        return self.timers()

    def unobserve_timers(self, observer: TimerObserver) -> None:
        self._timer_observers = [o for o in self._timer_observers if o is not observer]

    def observed_by(self, observer: TimerObserver) -> bool:
        return any(o is observer for o in self._timer_observers)

    @property
    def next_offset(self) -> int:
        raw = self.db.get(_NEXT_OFFSET)
        return 0 if raw is None else int(raw)

    @property
    def anchor(self) -> tuple[int, str] | None:
        raw = self.db.get(_ANCHOR)
        if raw is None:
            return None
        value = json.loads(raw)
        return int(value["offset"]), str(value["event_id"])

    @property
    def identity(self) -> dict[str, Any] | None:
        raw = self.db.get(_IDENTITY)
        return None if raw is None else dict(json.loads(raw))

    @property
    def active(self) -> int:
        raw = self.db.get(_ACTIVE)
        return 0 if raw is None else int(raw)

    # ------------------------------------------------------------ writes

    def set_identity(self, identity: dict[str, Any]) -> None:
        self.db.put(_IDENTITY, json.dumps(identity, sort_keys=True).encode())

    def write(self, change: StoreWrite) -> None:
        """Apply one batch's changes atomically (one WriteBatch)."""
        if change.empty and not change.active_delta:
            return
        batch = WriteBatch(raw_mode=True)
        for correlation_id, record in change.records.items():
            batch.put(
                _STATE + correlation_id.encode(), record if isinstance(record, bytes) else _dumps(record)
            )
        for due_ms, timer_id in change.timers_removed:
            batch.delete(_timer_key(due_ms, timer_id))
        for (due_ms, timer_id), timer in change.timers_added.items():
            value = {"correlation_id": timer.correlation_id, "timer_id": timer_id, "name": timer.name}
            batch.put(_timer_key(due_ms, timer_id), json.dumps(value).encode())
        if change.next_offset is not None and change.next_offset > self.next_offset:
            batch.put(_NEXT_OFFSET, str(change.next_offset).encode())
            if change.anchor is not None:
                offset, event_id = change.anchor
                batch.put(_ANCHOR, json.dumps({"offset": offset, "event_id": event_id}).encode())
        if change.active_delta:
            batch.put(_ACTIVE, str(max(0, self.active + change.active_delta)).encode())
        self.db.write(batch)
        if self._timer_observers and (change.timers_removed or change.timers_added):
            for observer in self._timer_observers:
                observer.timers_changed(change.timers_removed, change.timers_added)

    def flush(self) -> None:
        if self._db is not None and not self.read_only:
            self._db.flush()

    def close(self) -> None:
        """Flush and release the RocksDB lock so another instance can open this partition."""
        self._timer_observers = []
        if self._db is not None:
            try:
                self.flush()
            finally:
                self._db.close()
                self._db = None

    def destroy(self) -> None:
        """Close and delete the store (for `--rebuild`)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
