"""The RocksDB partition store, the registry (versions, upcasters) and the journal fold, without a broker."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_runtime_support import MINI, MiniProcess, MiniState, classified, email, sent

from pm.codec import decode, encode
from pm.events import JournalEntry, TimerFired, TimerPayload, utc_ms
from pm.journal import MAX_PROCESSED, ProcessRecord, advance, build_entry, evaluate, fold_entry
from pm.process import Decision, Status, Upcaster
from pm.registry import Registry, RegistryError
from pm.runtime import stage_change
from pm.store import PartitionStore, StoreError, StoreWrite, TimerEntry


def test_records_timers_and_offsets_survive_reopen(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "0", 0)
    write = StoreWrite()
    write.put_record("a", {"process": "mini", "version": 1, "status": "running", "state": {"x": 1}})
    write.add_timer(TimerEntry("a", "t-late", "late", 3_000))
    write.add_timer(TimerEntry("a", "t-early", "early", 1_000))
    write.add_timer(TimerEntry("b", "t-mid", "mid", 2_000))
    write.advance(7, "e7")
    write.advance(5, "e5")  # older offsets never move the anchor back
    write.active_delta = 2
    store.write(write)
    assert [t.timer_id for t in store.due_timers(2_000)] == ["t-early", "t-mid"]  # due order, inclusive
    assert store.due_timers(999) == []
    store.close()

    store = PartitionStore(tmp_path / "0", 0)
    assert store.get_record("a") == {"process": "mini", "version": 1, "status": "running", "state": {"x": 1}}
    assert store.get_record("missing") is None
    assert (store.next_offset, store.anchor, store.active) == (8, (7, "e7"), 2)
    change = StoreWrite()
    change.remove_timer(1_000, "t-early")
    change.active_delta = -1
    store.write(change)
    assert [t.timer_id for t in store.timers()] == ["t-mid", "t-late"]
    assert store.active == 1
    assert [cid for cid, _ in store.records()] == ["a"]
    store.close()


def test_records_pydantic_core_cannot_encode_and_stores_written_by_json_read_back(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "s", 0)
    try:
        odd = {"state": {"note": "lone \udc80 surrogate"}, "status": "running"}
        write = StoreWrite()
        write.put_record("a", odd)
        store.write(write)
        assert store.get_record("a") == odd
        store.db.put(b"s/old", json.dumps(odd).encode())  # a record as json.dumps wrote them before
        assert dict(store.records())["old"] == odd
    finally:
        store.close()


def test_lock_is_held_until_close_and_read_only_opens_alongside(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "3", 3)
    write = StoreWrite()
    write.put_record("a", {"status": "sent"})
    store.write(write)
    store.flush()
    with pytest.raises(StoreError, match="cannot open store"):
        PartitionStore(tmp_path / "3", 3)
    reader = PartitionStore(tmp_path / "3", 3, read_only=True)  # `pm processes` while the PM runs
    assert reader.get_record("a") == {"status": "sent"}
    reader.close()
    store.close()
    again = PartitionStore(tmp_path / "3", 3)  # released on close: another instance can take over
    again.destroy()
    assert not (tmp_path / "3").exists()


def test_stage_change_keeps_timer_index_and_active_count_consistent(tmp_path: Path) -> None:
    e = email("c1", "slow-timer")
    state = MINI.initial_state(e)
    decision = MINI.decide(state, e, e.occurred_at)
    first = advance(MINI, None, state, e, evaluate(MINI, state, e, now=e.occurred_at), 0)
    assert first.timers and first.active and decision.schedule
    write = StoreWrite()
    stage_change(write, None, first)
    c = classified("c1")
    second = advance(MINI, first, first.state, c, evaluate(MINI, first.state, c, now=c.occurred_at), 1)
    stage_change(write, first, second)
    s = sent("c1")
    third = advance(MINI, second, second.state, s, evaluate(MINI, second.state, s, now=s.occurred_at), 2)
    stage_change(write, second, third)
    store = PartitionStore(tmp_path / "0", 0)
    store.write(write)
    assert store.timers() == [] and store.active == 0
    assert store.get_record("c1")["status"] == "sent"  # type: ignore[index]
    assert third.processed == [e.event_id, c.event_id, s.event_id]
    store.close()


def test_fold_reproduces_live_states_and_skips_duplicate_entries() -> None:
    registry = Registry([MINI])
    live: ProcessRecord | None = None
    folded: ProcessRecord | None = None
    inputs = [email("c1"), classified("c1"), email("c1"), sent("c1")]
    for offset, event in enumerate(inputs):
        state = live.state if live else MINI.initial_state(event)
        outcome = evaluate(MINI, state, event, now=event.occurred_at)
        entry = build_entry(
            MINI,
            event,
            encode(event),
            topic=event.topic,
            partition=0,
            offset=offset,
            outcome=outcome,
            status="x",
        )
        live = (
            advance(MINI, live, state, event, outcome, offset)
            if not (live and live.seen(event.event_id))
            else live
        )
        for _ in range(2):  # the same entry twice (an aborted transaction a broker still shows)
            folded = fold_entry(registry, folded, entry, event, offset) or folded
    assert live is not None and folded is not None
    assert folded.to_json() == live.to_json()
    assert folded.status == "sent"


def test_fold_decides_with_the_recorded_time_or_the_inputs_time_in_old_entries() -> None:
    registry = Registry([MINI])
    e = email("c7")
    later = e.occurred_at + timedelta(minutes=10)  # the e-mail waited ten minutes in Kafka

    def folded_due(decided_at: datetime | None) -> int:
        outcome = evaluate(
            MINI, MINI.initial_state(e), e, now=e.occurred_at if decided_at is None else decided_at
        )
        entry = build_entry(
            MINI,
            e,
            encode(e),
            topic=e.topic,
            partition=0,
            offset=0,
            outcome=outcome,
            status="running",
            decided_at=decided_at,
        )
        entry = decode(encode(entry))  # as read back from the journal
        assert isinstance(entry, JournalEntry) and entry.payload.decided_at == decided_at
        record = fold_entry(registry, None, entry, e, 0)
        assert record is not None
        ((due_ms, _name),) = record.timers.values()
        assert [utc_ms(t.due_at) for t in entry.payload.timers_scheduled] == [
            datetime.fromtimestamp(due_ms / 1000, UTC)
        ]
        return due_ms

    hour_ms = 3600 * 1000  # MINI's timer for a "hello" e-mail
    assert folded_due(later) == int(later.timestamp() * 1000) + hour_ms
    # A version-1 entry has no decided_at: it was decided with the input's occurred_at.
    assert folded_due(None) == int(e.occurred_at.timestamp() * 1000) + hour_ms


def test_failed_and_rejected_entries_fold_without_deciding() -> None:
    registry = Registry([MINI])
    boom = email("c9", "boom")
    state = MINI.initial_state(boom)
    outcome = evaluate(MINI, state, boom, now=boom.occurred_at)
    assert outcome.outcome == "failed" and outcome.reason == "RuntimeError: cannot handle this e-mail"
    entry = build_entry(
        MINI,
        boom,
        encode(boom),
        topic="email.received",
        partition=0,
        offset=0,
        outcome=outcome,
        status="failed",
    )
    record = fold_entry(registry, None, entry, boom, 0)
    assert (
        record is not None and record.state.status == Status.FAILED and record.state.reason == outcome.reason
    )
    refused = evaluate(MINI, state, boom, verifier=lambda e: "unsigned", now=boom.occurred_at)
    assert refused.outcome == "rejected" and refused.decision is None  # decide never ran


def test_processed_ids_are_bounded() -> None:
    e = email("c1")
    record = advance(
        MINI, None, MINI.initial_state(e), e, evaluate(MINI, MINI.initial_state(e), e, now=e.occurred_at), 0
    )
    for i in range(MAX_PROCESSED + 10):
        fired = TimerFired(
            event_id=f"x{i}",
            correlation_id="c1",
            occurred_at=e.occurred_at,
            payload=TimerPayload(timer_id="other", name="n", due_at=e.occurred_at),
        )
        record = advance(
            MINI, record, record.state, fired, evaluate(MINI, record.state, fired, now=fired.occurred_at), i
        )
    assert len(record.processed) == MAX_PROCESSED and record.processed[-1] == f"x{MAX_PROCESSED + 9}"


class MiniV2State(MiniState):
    priority: str = "normal"


class MiniV2(MiniProcess):
    version = 2
    state_type = MiniV2State

    def _up(data: Mapping[str, Any]) -> Mapping[str, Any]:  # noqa: N805 - a plain function in the class body
        return {**data, "priority": "legacy"}

    upcasters: Mapping[int, Upcaster] = {1: _up}

    def decide(self, state: MiniState, event: Any, now: datetime) -> Decision[MiniState]:
        decision = super().decide(state, event, now)
        return decision


def test_registry_keeps_old_versions_and_upcasts_when_they_are_gone() -> None:
    e = email("c1")
    stored = MINI.decide(MINI.initial_state(e), e, e.occurred_at).state.model_dump(mode="json")
    both = Registry([MINI, MiniV2()])
    assert both.starter(e).version == 2  # type: ignore[union-attr]
    definition, state = both.resolve("mini", 1, stored)
    assert definition.version == 1 and type(state) is MiniState  # still deployed: keeps its version
    only_new = Registry([MiniV2()])
    definition, state = only_new.resolve("mini", 1, stored)
    assert definition.version == 2 and isinstance(state, MiniV2State) and state.priority == "legacy"
    with pytest.raises(RegistryError, match="newer"):
        Registry([MINI]).resolve("mini", 2, stored)
    with pytest.raises(RegistryError, match="no deployed"):
        only_new.resolve("other", 1, stored)
    with pytest.raises(RegistryError, match="twice"):
        Registry([MINI, MINI])
    assert both.starter(classified("c1")) is None


def test_registry_refuses_a_decide_without_the_decision_time() -> None:
    class OldStyle(MiniProcess):
        version = 3

        def decide(self, state: MiniState, event: Any) -> Decision[MiniState]:  # type: ignore[override]
            return Decision(state)

    with pytest.raises(RegistryError, match=r"decide must take \(state, event, now\)"):
        Registry([OldStyle()])


def test_timer_observers_get_every_committed_index_change_until_close(tmp_path: Path) -> None:
    class Seen:
        def __init__(self) -> None:
            self.changes: list[tuple[set[tuple[int, str]], dict[tuple[int, str], TimerEntry]]] = []

        def timers_changed(
            self, removed: Collection[tuple[int, str]], added: Mapping[tuple[int, str], TimerEntry]
        ) -> None:
            self.changes.append((set(removed), dict(added)))

    store = PartitionStore(tmp_path / "0", 0)
    early, late = TimerEntry("a", "t-early", "n", 1_000), TimerEntry("a", "t-late", "n", 3_000)
    write = StoreWrite()
    write.add_timer(late)
    store.write(write)
    seen, other = Seen(), Seen()
    assert store.observe_timers(seen) == [late]  # the index as it is, then its changes
    assert store.observe_timers(other) == [late] and store.observed_by(seen) and store.observed_by(other)
    write = StoreWrite()
    write.remove_timer(late.due_ms, late.timer_id)
    write.add_timer(early)
    store.write(write)
    write = StoreWrite()
    write.put_record("a", {"status": "running"})  # no timer change: nothing to tell
    store.write(write)
    store.unobserve_timers(other)
    write = StoreWrite()
    write.remove_timer(early.due_ms, early.timer_id)
    store.write(write)
    assert seen.changes == [({(3_000, "t-late")}, {(1_000, "t-early"): early}), ({(1_000, "t-early")}, {})]
    assert other.changes == [({(3_000, "t-late")}, {(1_000, "t-early"): early})]
    store.close()
    assert not store.observed_by(seen)  # a closed store tells nobody anything
