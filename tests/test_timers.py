"""`TimerService` keeps each store's due timers in memory (issue 15), without a broker.

The heap must answer exactly what the scan of the store's index answered: checked against the
scan-based service it replaced, over random schedules, cancels, fires, restarts and rebalances.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

import pm.timers
from pm.store import PartitionStore, StoreWrite, TimerEntry
from pm.timers import TimerService


class ScanTimerService:
    """The service before issue 15: scans every store's timer index on every call (the reference).

    One difference kept out of the comparison: the old scan stopped after `limit` due entries per
    partition counting the ones in flight, so 500 timers in flight hid the later due ones.
    """

    def __init__(self, clock: Callable[[], int], refire_after_ms: int) -> None:
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._refire_after_ms = refire_after_ms

    def due(self, stores: Mapping[int, PartitionStore], limit: int = 500) -> list[tuple[int, TimerEntry]]:
        now = self._clock()
        found: list[tuple[int, TimerEntry]] = []
        for partition, store in stores.items():
            for timer in store.due_timers(now, limit=2**31):
                fired_at = self._in_flight.get(timer.timer_id)
                if fired_at is not None and now - fired_at < self._refire_after_ms:
                    continue
                found.append((partition, timer))
                if len(found) >= limit:
                    return found
        return found

    def mark_fired(self, timers: Iterable[TimerEntry]) -> None:
        now = self._clock()
        for timer in timers:
            self._in_flight[timer.timer_id] = now

    def settle(self, timer_ids: Iterable[str]) -> None:
        for timer_id in timer_ids:
            self._in_flight.pop(timer_id, None)

    def reset(self) -> None:
        self._in_flight.clear()


class Clock:
    def __init__(self, ms: int = 1_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def _write(
    store: PartitionStore, *, add: Iterable[TimerEntry] = (), remove: Iterable[TimerEntry] = ()
) -> None:
    write = StoreWrite()
    for timer in remove:
        write.remove_timer(timer.due_ms, timer.timer_id)
    for timer in add:
        write.add_timer(timer)
    store.write(write)


def _ids(due: list[tuple[int, TimerEntry]]) -> list[tuple[int, str]]:
    return [(partition, timer.timer_id) for partition, timer in due]


def test_due_timers_come_from_memory_in_due_order_and_cancelled_ones_never(tmp_path: Path) -> None:
    clock = Clock(10_000)
    store = PartitionStore(tmp_path / "0", 0)
    cancelled = [TimerEntry(f"c{i}", f"x{i:05}", "gone", 5_000 + i) for i in range(3_000)]
    _write(store, add=cancelled)
    _write(store, remove=cancelled)
    late, early, tied = (
        TimerEntry("a", "t-late", "n", 12_000),
        TimerEntry("b", "t-early", "n", 9_000),
        TimerEntry("c", "t-a", "n", 9_000),
    )
    _write(store, add=[late, early, tied])
    service = TimerService(clock)
    service.load(0, store)

    def no_scan(*args: object, **kwargs: object) -> list[TimerEntry]:
        raise AssertionError("due() scanned the store")

    store.due_timers = no_scan  # type: ignore[method-assign]
    assert _ids(service.due({0: store})) == [(0, "t-a"), (0, "t-early")]  # due time, then timer ID
    clock.ms = 12_000
    assert _ids(service.due({0: store}, limit=2)) == [(0, "t-a"), (0, "t-early")]  # inclusive, limited
    assert _ids(service.due({0: store})) == [(0, "t-a"), (0, "t-early"), (0, "t-late")]
    _write(store, remove=[early])  # a later batch cancels one: the heap follows the store's writes
    assert _ids(service.due({0: store})) == [(0, "t-a"), (0, "t-late")]
    store.close()


def test_a_fired_timer_waits_for_its_refire_time_unless_settled_or_after_a_rebalance(tmp_path: Path) -> None:
    clock = Clock(10_000)
    store = PartitionStore(tmp_path / "0", 0)
    one, two = TimerEntry("a", "t1", "n", 9_000), TimerEntry("b", "t2", "n", 9_500)
    _write(store, add=[one, two])
    service = TimerService(clock, refire_after_ms=1_000)
    service.load(0, store)
    assert _ids(service.due({0: store})) == [(0, "t1"), (0, "t2")]
    assert _ids(service.due({0: store})) == [(0, "t1"), (0, "t2")]  # not committed: due again
    service.mark_fired([one])  # its TimerFired committed
    assert _ids(service.due({0: store})) == [(0, "t2")]
    clock.ms = 10_999
    assert _ids(service.due({0: store})) == [(0, "t2")]
    clock.ms = 11_000  # still pending a refire period later: fired again (same event ID, deduped)
    assert _ids(service.due({0: store})) == [(0, "t1"), (0, "t2")]
    service.mark_fired([one, two])
    assert service.due({0: store}) == []
    service.reset()  # a rebalance: whatever is in the index may need firing again
    assert _ids(service.due({0: store})) == [(0, "t1"), (0, "t2")]
    service.mark_fired([one, two])
    assert service.due({0: store}) == []
    # t1's TimerFired is journaled: it leaves the index and is settled; t2 still waits.
    _write(store, remove=[one])
    service.settle(["t1"])
    assert service.due({0: store}) == []
    # The same timer scheduled again at the same time after it left is a new timer: due at once.
    _write(store, add=[one])
    assert _ids(service.due({0: store})) == [(0, "t1")]
    service.settle(["t2"])  # no longer in flight, though still in the index: due at once, as a scan had it
    assert _ids(service.due({0: store})) == [(0, "t1"), (0, "t2")]
    store.close()


def test_the_heap_is_rebuilt_from_the_store_after_a_restart_and_dropped_with_the_partition(
    tmp_path: Path,
) -> None:
    clock = Clock(10_000)
    stores = {p: PartitionStore(tmp_path / str(p), p) for p in (0, 1)}
    _write(stores[0], add=[TimerEntry("a", "t0", "n", 9_000), TimerEntry("a", "t0-later", "n", 20_000)])
    _write(stores[1], add=[TimerEntry("b", "t1", "n", 8_000)])
    service = TimerService(clock)
    for partition, store in stores.items():
        service.load(partition, store)
    assert _ids(service.due(stores)) == [(0, "t0"), (1, "t1")]  # partition by partition
    assert _ids(service.due(stores, limit=1)) == [(0, "t0")]
    service.mark_fired([t for _p, t in service.due(stores)])
    stores[1].close()
    service.drop(1)  # revoked: its heap goes with its store
    del stores[1]
    assert service.due(stores) == []
    stores[0].close()
    service.drop(0)

    # A restart: nothing in memory survives, the heap comes back from the store (and fires again).
    clock.ms = 20_000
    stores = {p: PartitionStore(tmp_path / str(p), p) for p in (1, 0)}
    service = TimerService(clock)
    service.load(1, stores[1])
    assert _ids(service.due(stores)) == [(1, "t1"), (0, "t0"), (0, "t0-later")]  # store 0 loaded by due
    replaced = PartitionStore(tmp_path / "2", 0)  # another store object for partition 0: followed instead
    _write(replaced, add=[TimerEntry("z", "t-new", "n", 1)])
    assert _ids(service.due({0: replaced})) == [(0, "t-new")]
    _write(stores[0], add=[TimerEntry("z", "t-old-store", "n", 1)])
    assert _ids(service.due({0: replaced})) == [(0, "t-new")]
    for store in (*stores.values(), replaced):
        store.close()


def test_the_heap_matches_the_scan_it_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random batches of schedules, reschedules, cancels, fires (committed or not), journaled TimerFired,
    rebalances and restarts: the heap answers what a scan of the stores answered, call after call."""
    monkeypatch.setattr(pm.timers, "COMPACT_SLACK", 8)  # compact often
    rng = random.Random(15)
    clock = Clock(1_000_000)
    refire = 300

    def open_all() -> dict[int, PartitionStore]:
        return {p: PartitionStore(tmp_path / str(p), p) for p in (0, 1, 2)}

    stores = open_all()
    heap, scan = TimerService(clock, refire), ScanTimerService(clock, refire)
    for partition, store in stores.items():
        heap.load(partition, store)
    live: dict[int, dict[str, TimerEntry]] = {p: {} for p in stores}  # the model: what the index holds
    landing: list[tuple[int, TimerEntry]] = []  # fired and committed: their TimerFired comes back later
    next_id = 0
    checked = fired = 0
    for _step in range(3_000):
        op = rng.random()
        if op < 0.1 and landing:  # a batch journals the TimerFired of some fired timers
            rng.shuffle(landing)
            arrived, landing = landing[: rng.randint(1, len(landing))], []
            for partition, timer in arrived:
                if live[partition].get(timer.timer_id) == timer:  # else cancelled or rescheduled since
                    del live[partition][timer.timer_id]
                    _write(stores[partition], remove=[timer])
                    for service in (heap, scan):
                        service.settle([timer.timer_id])
        elif op < 0.45:  # a committed batch changes some timers in some partitions
            for partition in rng.sample(sorted(stores), rng.randint(1, len(stores))):
                write, settled = StoreWrite(), []
                timers = live[partition]
                for _ in range(rng.randint(1, 6)):
                    kind = rng.random()
                    if kind < 0.45 or not timers:
                        next_id += 1
                        timer_id = (
                            f"t{next_id:06}" if rng.random() < 0.9 else f"t{rng.randint(1, next_id):06}"
                        )
                        old = timers.get(timer_id)
                        if old is not None:
                            write.remove_timer(old.due_ms, timer_id)
                        due = clock.ms + rng.choice([-50, 0, 1, 100, 250, 1_000, rng.randint(-500, 2_000)])
                        timers[timer_id] = TimerEntry(f"c{timer_id}", timer_id, "n", due)
                        write.add_timer(timers[timer_id])
                    else:
                        timer_id = rng.choice(sorted(timers))
                        old = timers[timer_id]
                        if kind < 0.75:  # cancelled, ended or its TimerFired journaled
                            del timers[timer_id]
                            write.remove_timer(old.due_ms, timer_id)
                            settled.append(timer_id)
                        elif kind < 0.9:  # rescheduled under the same ID
                            write.remove_timer(old.due_ms, timer_id)
                            timers[timer_id] = TimerEntry(old.correlation_id, timer_id, "n", old.due_ms + 70)
                            write.add_timer(timers[timer_id])
                        else:  # cancelled and scheduled again at the very same time (same key)
                            write.remove_timer(old.due_ms, timer_id)
                            write.add_timer(old)
                for service in (heap, scan):
                    service.settle(settled)
                stores[partition].write(write)
        elif op < 0.8:  # run_once: due timers, fired in a transaction that commits or aborts
            limit = rng.choice([1, 3, 10, 500])
            expected = scan.due(stores, limit)
            assert _ids(heap.due(stores, limit)) == _ids(expected)
            assert [t for _p, t in heap.due(stores, limit)] == [t for _p, t in expected]
            checked += 1
            fired += len(expected)
            if expected and rng.random() < 0.8:
                committed = [(p, t) for p, t in expected if rng.random() < 0.9]
                for service in (heap, scan):
                    service.mark_fired(t for _p, t in committed)
                landing += [(p, t) for p, t in committed if rng.random() < 0.9]  # some TimerFired are lost
        elif op < 0.95:
            clock.ms += rng.choice([0, 1, 10, 60, 200, 301])
        elif op < 0.99:  # a rebalance keeps the stores, forgets what is in flight
            for service in (heap, scan):
                service.reset()
        else:  # a restart
            for partition, store in stores.items():
                store.close()
                heap.drop(partition)
            stores = open_all()
            heap, scan = TimerService(clock, refire), ScanTimerService(clock, refire)
            for partition, store in stores.items():
                heap.load(partition, store)
    for partition, store in stores.items():
        expected_live = sorted(live[partition].values(), key=lambda t: (t.due_ms, t.timer_id))
        assert store.timers() == expected_live
        assert heap.load(partition, store).timers() == expected_live
        store.close()
    assert checked > 1_000 and fired > 1_000
