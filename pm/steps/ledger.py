"""The step ledger: what a step consumer has done per command ID, in a local RocksDB (rocksdict).

The base records every completed command with the exact bytes of its result, so a
redelivered command re-publishes the same result instead of running the handler
again. Handlers with side effects that cannot be undone (sending a message, a payment) mark
intermediate states through the same ledger (`mark`), durable (fsync) before `mark` returns,
before the side effect (and after it, unless marked `durable=False`), so a crash between the two
is visible after a restart.

`mark` commits as a group: it writes without an fsync, then waits for a sync of the write-ahead
log that covers its write. One thread syncs while marks written meanwhile wait for the next one,
so concurrent marks share an fsync, and the GIL is free during it (a synced put kept it for the
whole fsync, ~0.3 ms in which no other thread of the consumer ran).

`complete` (every command's result) goes to RocksDB's write-ahead log without an fsync: it
survives a crash of the process (kill -9), and only a crash of the machine can lose it. Then
the redelivered command runs its handler again: a handler without side effects answers anew
(the PM takes the first answer to a command ID and ignores the late one), and one with side
effects finds its synced `mark` (e.g. `sending`) and does not repeat them. One fsync per
result was the largest cost of a step consumer besides its handler.

One ledger per step and topic prefix: `<state_dir>/steps/<prefix>/<step>/`. RocksDB
locks it, so one consumer process per ledger directory.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, WriteOptions

from pm.config import Config
from pm.errors import PmError

__all__ = ["COMPLETED", "Ledger", "LedgerEntry", "LedgerError", "ledger_path"]

COMPLETED = "completed"
RESULT_FORMAT = b"\x02"  # first byte of an entry with a result (a JSON entry starts with "{")
_LENGTH = struct.Struct(">I")


class LedgerError(PmError):
    """The ledger cannot be opened (locked by another consumer, corrupt) or holds an unreadable entry."""


@dataclass(frozen=True)
class LedgerEntry:
    """A command's record: its state, handler details (e.g. the server's response) and, once completed, the result."""

    state: str
    detail: dict[str, Any] = field(default_factory=dict)
    result: bytes | None = None  # the encoded result event, exactly as published

    @property
    def completed(self) -> bool:
        return self.state == COMPLETED

    def to_bytes(self) -> bytes:
        """JSON `{"state", "detail"}`; with a result: `RESULT_FORMAT`, the JSON's length, the JSON, the
        result.

        (The result used to be base64 inside the JSON: 25 us and a third more bytes per 3 KB result.)
        """
        header = json.dumps({"state": self.state, "detail": self.detail}, sort_keys=True).encode()
        if self.result is None:
            return header
        return RESULT_FORMAT + _LENGTH.pack(len(header)) + header + self.result

    @classmethod
    def from_bytes(cls, raw: bytes) -> LedgerEntry:
        """Either form `to_bytes` writes, or the JSON with a base64 `result` of ledgers written before."""
        result: bytes | None = None
        if raw[:1] == RESULT_FORMAT:
            start = 1 + _LENGTH.size
            if len(raw) < start:
                raise ValueError(f"an entry of {len(raw)} bytes is too short for its header's length")
            (length,) = _LENGTH.unpack_from(raw, 1)
            if start + length > len(raw):
                raise ValueError(f"entry header of {length} bytes runs past the {len(raw)}-byte entry")
            data = _object(raw[start : start + length])
            result = raw[start + length :]
        else:
            data = _object(raw)
            if data.get("result") is not None:
                result = base64.b64decode(data["result"], validate=True)
        return cls(state=str(data["state"]), detail=dict(data.get("detail") or {}), result=result)


def _object(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"a ledger entry's header is a JSON {type(data).__name__}, not an object")
    return data


def ledger_path(config: Config, step: str) -> Path:
    """`<state_dir>/steps/<topic prefix or "_">/<step>`: separate ledgers for environments sharing a host."""
    prefix = config.topic_prefix.replace("/", "_") or "_"
    return config.state_dir / "steps" / prefix / step


class Ledger:
    """Command ID -> `LedgerEntry`. Thread-safe; `mark` is synced (it guards external side effects)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db = Rdict(str(path), options)
        except Exception as exc:  # rocksdict raises a bare Exception for a held lock
            raise LedgerError(
                f"cannot open the step ledger at {path}: {exc} (is another consumer using it?)"
            ) from exc
        # Every write goes to the write-ahead log without an fsync; what must be durable waits for a
        # WAL sync that covers it (`_sync_through`). See the module doc.
        unsynced = WriteOptions()
        unsynced.sync = False
        self._db.set_write_options(unsynced)
        self._lock = threading.Lock()
        self._closed = False
        # Group commit (`_sync_through`): writes are numbered; `_synced` is the last one a WAL sync covered.
        self._written = 0
        self._synced = 0
        self._syncing = False
        self._sync_done = threading.Condition()

    def get(self, command_id: str) -> LedgerEntry | None:
        with self._lock:
            raw = self._db.get(command_id.encode())
        if raw is None:
            return None
        try:
            return LedgerEntry.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"ledger entry for command {command_id} is unreadable: {exc}") from exc

    def mark(self, command_id: str, state: str, *, durable: bool = True, **detail: Any) -> LedgerEntry:
        """Record an intermediate state (merging `detail` into what is there); durable when this returns.

        `durable=False`: written like `complete` (survives kill -9, not a power loss), and synced with
        the next durable mark. For a state whose loss only costs a worse recovery, never a repeat.
        """
        if state == COMPLETED:
            raise ValueError("use complete() to record a result")
        with self._lock:
            raw = self._db.get(command_id.encode())
            previous = LedgerEntry.from_bytes(raw) if raw is not None else None
            if previous is not None and previous.completed:
                raise LedgerError(f"command {command_id} is already completed")
            entry = LedgerEntry(state=state, detail={**(previous.detail if previous else {}), **detail})
            self._db.put(command_id.encode(), entry.to_bytes())
            self._written += 1
            ticket = self._written
        if durable:
            self._sync_through(ticket)
        return entry

    def _sync_through(self, ticket: int) -> None:
        """Return once a WAL sync covered write number `ticket`: run one, or wait for the one running."""
        with self._sync_done:
            while self._synced < ticket and self._syncing:
                self._sync_done.wait()
            if self._synced >= ticket:
                return
            self._syncing = True
        synced = False
        try:
            with self._lock:
                covered = self._written  # every write numbered so far has returned from its put
                if self._closed:
                    raise LedgerError(f"the step ledger at {self.path} is closed")
            self._db.flush_wal(True)  # fsync of the write-ahead log, without the GIL
            synced = True
        finally:
            with self._sync_done:
                self._syncing = False
                if synced:
                    self._synced = max(self._synced, covered)
                self._sync_done.notify_all()  # a failed sync: the next waiter tries its own

    def complete(self, command_id: str, result: bytes) -> LedgerEntry:
        """Record the command's result (keeping any handler details); later deliveries re-publish it."""
        with self._lock:
            raw = self._db.get(command_id.encode())
            detail = LedgerEntry.from_bytes(raw).detail if raw is not None else {}
            entry = LedgerEntry(state=COMPLETED, detail=detail, result=result)
            self._db.put(command_id.encode(), entry.to_bytes())
        return entry

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True  # no WAL sync starts from here on (`_sync_through` checks it)
        with self._sync_done:  # and the one running, if any, ends before the database does
            while self._syncing:
                self._sync_done.wait()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
