"""Durable timers: the due index lives in the partition stores; this service turns due entries into `TimerFired`.

Kafka has no delayed delivery. A decision schedules a timer (recorded in the
journal entry), the store keeps it in a due-time index, and between polls the
runtime asks `TimerService.due()` for timers whose time has come (the wall clock
is read here, at the edge, never in `decide`). It produces a `TimerFired` with a
derived event ID inside the batch transaction; the timer leaves the index only
when that `TimerFired` comes back as an input and is journaled. A crash or an
aborted transaction in between fires it again with the same event ID, which
dedupe turns into a no-op, so timers survive restarts and rebalances. Cancelled
timers are removed from the index by the decision that cancels them, so they
never fire (a race with a late cancel is left to `decide`, which ignores stale
timers).

`due()` does not scan RocksDB: each assigned store's index is read once (`load`, when the
store is opened, after its catch-up) into an in-memory min-heap (`DueHeap`), which every
later `PartitionStore.write` keeps in step (the store reports its timer index changes). A
cancelled timer's heap entry is dropped lazily when it reaches the top, so the cost of a call
with nothing due is a peek per partition, whatever the history of cancelled timers (a scan
of the store's index seeks over their tombstones: issue 15).
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from pm.events import TimerFired, TimerPayload, derive_id
from pm.store import PartitionStore, TimerEntry

__all__ = ["DueHeap", "TimerService", "fired_event", "now_ms"]

# Heap items: (due_ms, timer_id, version). `version` tells a live entry from the stale ones a
# cancel (or a reschedule, or a re-add of the same key) left behind, and keeps tuples from ever
# comparing further. The key (due_ms, timer_id) is the store's (`t/<due_ms>/<timer_id>`), so
# the heap's order is the order of the store's scan (due time, then timer ID).
_Key = tuple[int, str]
_Item = tuple[int, str, int]
_Live = tuple[int, str, str]  # (version, correlation_id, name): ~400 B a timer with its key and item
# Stale heap items are dropped when they reach the top; a heap holding more than this many
# beyond its live entries (and more than twice them) is rebuilt from the live ones.
COMPACT_SLACK = 1024


def now_ms() -> int:
    return int(time.time() * 1000)


def _from_ms(ms: int) -> datetime:
    """Epoch milliseconds as a UTC datetime, exactly (integer arithmetic, no float rounding)."""
    return datetime.fromtimestamp(ms // 1000, tz=UTC) + timedelta(milliseconds=ms % 1000)


def fired_event(timer: TimerEntry) -> TimerFired:
    """The `TimerFired` for a due timer: same timer, same event ID (dedupe makes refires no-ops)."""
    due_at = _from_ms(timer.due_ms)
    return TimerFired(
        event_id=derive_id(timer.timer_id, "fired"),
        correlation_id=timer.correlation_id,
        causation_id=timer.timer_id,
        occurred_at=due_at,  # time inside the process is the due time, not when we noticed
        payload=TimerPayload(timer_id=timer.timer_id, name=timer.name, due_at=due_at),
    )


class DueHeap:
    """One store's timer index in memory: the live entries, and a min-heap of them by due time.

    Loaded from the store once and kept in step by it (`timers_changed` is the store's observer
    call, made after each committed `write`). Timers whose `TimerFired` is in flight are moved
    to a second heap ordered by when they may fire again, so they cost nothing while they wait.
    """

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        # One scan of the store's index, then kept in step by the store.
        timers = store.observe_timers(self)
        self._live: dict[_Key, _Live] = {
            (t.due_ms, t.timer_id): (0, t.correlation_id, sys.intern(t.name)) for t in timers
        }
        self._heap: list[_Item] = [(due_ms, timer_id, 0) for due_ms, timer_id in self._live]
        heapq.heapify(self._heap)
        # Items of timers in flight, by when they may fire again: (fired at + refire_after_ms, *item).
        self._waiting: list[tuple[int, int, str, int]] = []
        self._version = 0

    def __len__(self) -> int:
        return len(self._live)

    def timers_changed(self, removed: Collection[_Key], added: Mapping[_Key, TimerEntry]) -> None:
        """The store committed these index changes (removals first, as its WriteBatch applies them)."""
        for key in removed:
            self._live.pop(key, None)  # its heap item is now stale: dropped when it reaches the top
        for (due_ms, timer_id), timer in added.items():  # due time and timer ID from the key, as the store
            self._version += 1
            self._live[(due_ms, timer_id)] = (self._version, timer.correlation_id, sys.intern(timer.name))
            heapq.heappush(self._heap, (due_ms, timer_id, self._version))
        stale = len(self._heap) + len(self._waiting) - len(self._live)
        if stale > COMPACT_SLACK and stale > 2 * len(self._live):
            self._compact()

    def _live_item(self, item: _Item) -> bool:
        found = self._live.get((item[0], item[1]))
        return found is not None and found[0] == item[2]

    def _entry(self, item: _Item) -> TimerEntry | None:
        """The timer of a heap item, None when the item is stale."""
        found = self._live.get((item[0], item[1]))
        if found is None or found[0] != item[2]:
            return None
        return TimerEntry(found[1], item[1], found[2], item[0])

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if self._live_item(item)]
        heapq.heapify(self._heap)
        self._waiting = [w for w in self._waiting if self._live_item(w[1:])]
        heapq.heapify(self._waiting)

    def due(
        self, now: int, limit: int, in_flight: Mapping[str, int], refire_after_ms: int
    ) -> list[TimerEntry]:
        """Up to `limit` live timers due by `now`, earliest first, except those fired under `refire_after_ms` ago.

        The timers stay in the heap: they leave it when the store removes them from its index.
        """
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            item = heapq.heappop(waiting)[1:]
            if self._live_item(item):
                heapq.heappush(self._heap, item)
        heap = self._heap
        found: list[TimerEntry] = []
        taken: list[_Item] = []
        while heap and heap[0][0] <= now and len(found) < limit:
            item = heapq.heappop(heap)
            timer = self._entry(item)
            if timer is None:
                continue  # cancelled, rescheduled or fired and journaled: gone for good
            fired_at = in_flight.get(timer.timer_id)
            if fired_at is not None and now - fired_at < refire_after_ms:
                heapq.heappush(waiting, (fired_at + refire_after_ms, *item))
                continue
            found.append(timer)
            taken.append(item)
        for item in taken:
            heapq.heappush(heap, item)
        return found

    def wake(self) -> None:
        """The timers waiting for their refire time go back to the due heap (some are no longer in flight).

        `due` looks at them again, and puts those still in flight back to wait.
        """
        for waiting in self._waiting:
            item = waiting[1:]
            if self._live_item(item):
                heapq.heappush(self._heap, item)
        self._waiting = []

    def timers(self) -> list[TimerEntry]:
        """The live timers, earliest first (the store's `timers()`, from memory)."""
        return [
            TimerEntry(cid, timer_id, name, due_ms)
            for (due_ms, timer_id), (_v, cid, name) in sorted(self._live.items())
        ]

    def close(self) -> None:
        """Stop following the store (it may stay open, another service may follow it)."""
        self.store.unobserve_timers(self)


class TimerService:
    """Finds due timers in the assigned stores; remembers which it has already fired (in memory)."""

    def __init__(self, clock: Callable[[], int] = now_ms, refire_after_ms: int = 60_000) -> None:
        self._clock = clock
        self._in_flight: dict[str, int] = {}  # timer_id -> when we produced its TimerFired
        self._refire_after_ms = refire_after_ms
        self._heaps: dict[int, DueHeap] = {}  # partition -> its store's timers

    def now(self) -> datetime:
        """The service's clock as a UTC datetime (millisecond precision): the runtime's decision time."""
        return _from_ms(self._clock())

    def load(self, partition: int, store: PartitionStore) -> DueHeap:
        """Read the store's timer index into memory (one scan) and follow its writes from now on.

        Call once the store is caught up (`due` loads a store it has no heap for by itself).
        """
        old = self._heaps.pop(partition, None)
        if old is not None:
            old.close()
        heap = self._heaps[partition] = DueHeap(store)
        return heap

    @property
    def partitions(self) -> list[int]:
        """The partitions whose timers are in memory."""
        return sorted(self._heaps)

    def drop(self, partition: int) -> None:
        """Forget a partition's timers (its store is closed: revoked, or the PM stops)."""
        heap = self._heaps.pop(partition, None)
        if heap is not None:
            heap.close()

    def due(self, stores: Mapping[int, PartitionStore], limit: int = 500) -> list[tuple[int, TimerEntry]]:
        """(partition, timer) pairs due now and not in flight; refired if still pending after a while.

        Partition by partition (in the order of `stores`), earliest first in each, as many as `limit`.
        From memory: a store without a heap here (or another store object) is loaded first.
        """
        now = self._clock()
        found: list[tuple[int, TimerEntry]] = []
        for partition, store in stores.items():
            heap = self._heaps.get(partition)
            if heap is None or heap.store is not store or not store.observed_by(heap):
                heap = self.load(partition, store)
            for timer in heap.due(now, limit - len(found), self._in_flight, self._refire_after_ms):
                found.append((partition, timer))
            if len(found) >= limit:
                return found
        return found

    def mark_fired(self, timers: Iterable[TimerEntry]) -> None:
        """Call after the transaction carrying their TimerFired committed."""
        now = self._clock()
        for timer in timers:
            self._in_flight[timer.timer_id] = now

    def settle(self, timer_ids: Iterable[str]) -> None:
        """The timers left the index (fired and journaled, cancelled, process ended)."""
        landed = False
        for timer_id in timer_ids:
            landed |= self._in_flight.pop(timer_id, None) is not None
        if landed:  # no timer waits on what is not in flight (normally: those that left the index)
            for heap in self._heaps.values():
                heap.wake()

    def reset(self) -> None:
        """After a rebalance: whatever is still in the index may need firing again."""
        self._in_flight.clear()
        for heap in self._heaps.values():
            heap.wake()
