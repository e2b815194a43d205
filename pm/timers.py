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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from pm.events import TimerFired, TimerPayload, derive_id
from pm.store import PartitionStore, TimerEntry

__all__ = ["TimerService", "fired_event", "now_ms"]


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


class TimerService:
    """Finds due timers in the assigned stores; remembers which it has already fired (in memory)."""

    def __init__(self, clock: Callable[[], int] = now_ms, refire_after_ms: int = 60_000) -> None:
        self._clock = clock
        self._in_flight: dict[str, int] = {}  # timer_id -> when we produced its TimerFired
        self._refire_after_ms = refire_after_ms

    def now(self) -> datetime:
        """The service's clock as a UTC datetime (millisecond precision): the runtime's decision time."""
        return _from_ms(self._clock())

    def due(self, stores: Mapping[int, PartitionStore], limit: int = 500) -> list[tuple[int, TimerEntry]]:
        """(partition, timer) pairs due now and not in flight; refired if still pending after a while."""
        now = self._clock()
        found: list[tuple[int, TimerEntry]] = []
        for partition, store in stores.items():
            for timer in store.due_timers(now, limit=limit):
                fired_at = self._in_flight.get(timer.timer_id)
                if fired_at is not None and now - fired_at < self._refire_after_ms:
                    continue
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
        for timer_id in timer_ids:
            self._in_flight.pop(timer_id, None)

    def reset(self) -> None:
        """After a rebalance: whatever is still in the index may need firing again."""
        self._in_flight.clear()
