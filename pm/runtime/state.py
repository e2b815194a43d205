"""In-memory state the process manager keeps between batches, and the store diff of a process change.

Shared by the live path (`checkpoint`, `inputs`) and catch-up (`recovery`); none of it is durable:
the store and the journal are, and everything here is rebuilt or simply lost on a restart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from pm.journal import ProcessRecord
from pm.process import ProcessDefinition, Status
from pm.registry import Registry
from pm.store import PartitionStore, StoreWrite, TimerEntry

UNCONFIRMED_LIMIT = 10_000  # catch-up outputs kept for re-emission; only the journal's tail matters

Position = tuple[str, int, int]  # an input record: (topic, partition, offset)


def stage_change(
    write: StoreWrite, old: ProcessRecord | None, new: ProcessRecord, encoded: bytes | None = None
) -> None:
    """Add a process record change to a store write: the record, timer index diff, active count.

    `encoded`: `new` already in its stored form (its journal entry's record, offset put back).
    """
    stage_stored(
        write,
        new.correlation_id,
        new.to_json() if encoded is None else encoded,
        old.timers if old is not None else {},
        new.timers,
        int(new.active) - int(old.active if old is not None else False),
    )


def stage_stored(
    write: StoreWrite,
    correlation_id: str,
    stored: dict[str, Any] | bytes,
    old_timers: Mapping[str, tuple[int, str]],
    new_timers: Mapping[str, tuple[int, str]],
    active_delta: int,
) -> None:
    """`stage_change` for a record already in its stored form (a journal entry's `record`)."""
    write.put_record(correlation_id, stored)
    for timer_id, (due_ms, _name) in old_timers.items():
        if new_timers.get(timer_id, (None,))[0] != due_ms:
            write.remove_timer(due_ms, timer_id)
    for timer_id, (due_ms, name) in new_timers.items():
        if old_timers.get(timer_id, (None,))[0] != due_ms:
            write.add_timer(TimerEntry(correlation_id, timer_id, name, due_ms))
    write.active_delta += active_delta


def stored_timers(stored: Mapping[str, Any] | None) -> dict[str, tuple[int, str]]:
    """The pending timers of a stored record (timer_id -> (due_ms, name))."""
    if stored is None:
        return {}
    return {k: (int(v[0]), str(v[1])) for k, v in dict(stored.get("timers", {})).items()}


def stored_active(stored: Mapping[str, Any] | None) -> bool:
    return stored is not None and stored.get("status") == Status.RUNNING


def read_record(
    registry: Registry, store: PartitionStore, correlation_id: str
) -> tuple[ProcessRecord, ProcessDefinition[Any]] | None:
    """A process as the store holds it, or None."""
    data = store.get_record(correlation_id)
    if data is None:
        return None
    return ProcessRecord.from_json(registry, correlation_id, data)


class ProcessCache:
    """The `size` processes used last (LRU): their record, definition and partition, as committed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[int, ProcessRecord, ProcessDefinition[Any]]] = OrderedDict()

    def get(self, correlation_id: str) -> tuple[ProcessRecord, ProcessDefinition[Any]] | None:
        cached = self._entries.get(correlation_id)
        if cached is None:
            return None
        self._entries.move_to_end(correlation_id)
        return cached[1], cached[2]

    def remember(
        self, correlation_id: str, partition: int, record: ProcessRecord, definition: ProcessDefinition[Any]
    ) -> None:
        self._entries[correlation_id] = (partition, record, definition)
        self._entries.move_to_end(correlation_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class UnconfirmedOutputs:
    """Outputs of journal entries met during catch-up, by input position (see `InputHandler._reemit`)."""

    def __init__(self, limit: int = UNCONFIRMED_LIMIT) -> None:
        self.limit = limit
        self._outputs: OrderedDict[Position, tuple[bytes, ...]] = OrderedDict()

    def remember(self, payload: Mapping[str, Any]) -> None:
        """Keep the outputs of a journal entry found during catch-up (its payload's plain fields,
        read by `pm.codec.read_paths`), keyed by the input's position."""
        outputs = (*payload["commands"], *payload["published"])
        if payload["outcome"] != "applied" or not outputs:
            return
        position = (str(payload["input_topic"]), int(payload["input_partition"]), int(payload["input_offset"]))
        self._outputs[position] = outputs
        self._trim()

    def _trim(self) -> None:
        while len(self._outputs) > self.limit:
            self._outputs.popitem(last=False)

    def pop(self, position: Position) -> tuple[bytes, ...]:
        return self._outputs.pop(position, ())

    def items(self) -> list[tuple[Position, tuple[bytes, ...]]]:
        """What is kept, oldest first (a rebuild worker hands it to its PM: `absorb`)."""
        return list(self._outputs.items())

    def absorb(self, items: list[tuple[Position, tuple[bytes, ...]]]) -> None:
        """Keep outputs another process found (`items`), as if remembered here."""
        for position, outputs in items:
            self._outputs[position] = outputs
        self._trim()


class RetryTimes:
    """Decision times of inputs whose transaction aborted, by input position.

    The retry decides them with the same time, so a broker that shows aborted records holds
    identical entries for one input (and a fold equals the live store). The price: an input whose
    commit keeps failing for longer than a step timeout is finally decided with its first, old time
    (README, known limits).
    """

    def __init__(self, limit: int = UNCONFIRMED_LIMIT) -> None:
        self.limit = limit
        self._times: dict[Position, datetime] = {}

    def keep(self, decided_at: Mapping[Position, datetime]) -> None:
        if len(self._times) > self.limit:
            self._times.clear()  # positions never consumed again (moved away): only a bound
        self._times.update(decided_at)

    def take(self, position: Position, default: datetime) -> datetime:
        return self._times.pop(position, default)

    def forget(self, partitions: Collection[int]) -> None:
        """Drop the times of these partitions (revoked: another instance decides their inputs now)."""
        self._times = {k: v for k, v in self._times.items() if k[1] not in partitions}
