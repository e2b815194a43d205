"""The PM fires timers from the in-memory heap (issue 15), on a broker: loaded once per assigned store,
never scanned per batch, dropped with a revoked partition, rebuilt by the instance that takes it over."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from test_runtime_recovery import records
from test_runtime_support import PmThread, classified, email, publish, read_topic, wait_until

from pm.codec import decode
from pm.config import Config
from pm.events import JournalEntry, TimerFired
from pm.store import PartitionStore, TimerEntry

FULL_SCAN = 2**62  # PartitionStore.timers(): the one scan that loads a heap


def _stages(configs: list[Config]) -> dict[str, str]:
    """correlation ID -> stage, from the newest record across instances (a moved partition leaves a copy)."""
    return {cid: str(data["state"]["stage"]) for cid, data in records(configs).items()}


def test_timers_fire_once_from_memory_across_a_rebalance(
    topics: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = topics
    scans: list[int] = []  # now_ms of every scan of a store's timer index
    scan = PartitionStore.due_timers

    def counted(self: PartitionStore, now_ms: int, limit: int = 1000) -> list[TimerEntry]:
        scans.append(now_ms)
        return scan(self, now_ms, limit)

    monkeypatch.setattr(PartitionStore, "due_timers", counted)
    configs = [replace(config, instance_id=f"pm-{i}", state_dir=tmp_path / f"pm-{i}") for i in range(2)]
    cids = [f"<t{i}@mail.example>" for i in range(16)]
    kept, cancelled = cids[::2], cids[1::2]
    with PmThread(configs[0]) as first:
        publish(config, [email(c, "slow-timer") for c in cids])  # 5 s timers
        wait_until(lambda: all(_stages(configs).get(c) == "classifying" for c in cids), timeout=15)
        publish(config, [classified(c) for c in cancelled])  # cancels their timers
        with PmThread(configs[1]) as second:  # takes some partitions over, timers pending
            wait_until(lambda: all(_stages(configs).get(c) == "sending" for c in cancelled), timeout=15)
            wait_until(lambda: all(_stages(configs).get(c) == "timed-out" for c in kept), timeout=30)
            managers = [first.manager, second.manager]
            assert all(m is not None and m.stores for m in managers), "both instances own partitions"
            for manager in managers:
                assert manager is not None
                assert manager.timers.partitions == sorted(manager.stores)  # revoked ones dropped
    fired = [decode(m.value()) for m in read_topic(config, "pm.timers")]
    assert all(isinstance(f, TimerFired) for f in fired)
    assert {f.correlation_id for f in fired} == set(kept)  # none cancelled
    # A timer fired just before its partition moved is fired again by the new owner (its TimerFired
    # had not come back yet, pm.timers): same event ID, so the journal takes it once.
    journaled = [
        entry.correlation_id
        for entry in (decode(m.value()) for m in read_topic(config, "pm.journal"))
        if isinstance(entry, JournalEntry) and isinstance(decode(entry.payload.event), TimerFired)
    ]
    assert Counter(journaled) == Counter(kept)  # once each
    # Every scan loaded a heap (one per store opened), none looked for due timers: those came from memory.
    assert scans and set(scans) == {FULL_SCAN}
    assert len(scans) <= 3 * 6, scans  # a few assignments of six partitions, not one per batch
