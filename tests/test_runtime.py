"""The PM runtime on a real broker, with the tiny test-only process of test_runtime_support."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections import Counter
from contextlib import redirect_stdout
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from test_runtime_support import (
    PmThread,
    classified,
    email,
    publish,
    read_topic,
    sent,
    wait_stage,
    wait_until,
)

from pm.cli import main as pm_main
from pm.codec import decode
from pm.commands.processes import list_processes
from pm.config import Config
from pm.events import ApprovalDecided, ApprovalDecidedPayload, DlqRecord, TimerFired, derive_id
from pm.journal import iter_journal
from pm.runtime import ProcessManager
from pm.store import PartitionStore, StoreError, list_store_paths, store_root
from pm.topics import apply_topics


def statuses(config: Config) -> dict[str, str]:
    return {row["correlation_id"]: row["status"] for row in list_processes(config)}


def journal(config: Config) -> list[tuple[str, str, str, str]]:
    """(correlation ID, input event ID, outcome, status) of every journal entry."""
    return [
        (r.entry.correlation_id, r.event.event_id, r.entry.payload.outcome, r.entry.payload.status)
        for r in iter_journal(config, idle_timeout=10)
    ]


def cli(config: Config, *args: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        code = pm_main(
            [
                *args,
                "--bootstrap",
                config.bootstrap,
                "--prefix",
                config.topic_prefix,
                "--state-dir",
                str(config.state_dir),
            ]
        )
    assert code == 0
    return out.getvalue()


def test_process_runs_through_all_steps_with_duplicates_poison_and_a_failing_decide(topics: Config) -> None:
    config = topics
    cids = [f"<m{i}@mail.example>" for i in range(3)]
    boom = "<boom@mail.example>"
    decided = ApprovalDecided(
        event_id="approval-1",
        correlation_id=cids[1],
        occurred_at=datetime.now(UTC),
        payload=ApprovalDecidedPayload(
            approval_id="a1",
            decision="approve",
            reviewer="mallory",
            draft_hash="0" * 64,
            policy_version="v1",
            decided_at=datetime.now(UTC),
        ),
    )
    log = io.StringIO()
    refuse = lambda e: "unsigned: no signature" if isinstance(e, ApprovalDecided) else None  # noqa: E731
    with PmThread(config, log=log, verifier=refuse) as pm:
        # A poison record, then a good e-mail with the same key (same partition, right after it);
        # an EmailClassified for a process nobody started; a failing decide.
        publish(config, [("email.received", cids[0], b"\x00not avro at all")])
        publish(config, [email(c) for c in cids] + [email(boom, subject="boom"), classified("<ghost@x>")])
        wait_stage(config, cids, "classifying")
        publish(config, [classified(c) for c in cids])
        wait_stage(config, cids, "sending")
        publish(config, [decided])  # the edge check refuses it before decide runs
        publish(config, [sent(c) for c in cids])
        # Duplicates of every kind of input: re-delivered e-mail, result, final result.
        publish(config, [email(cids[0]), classified(cids[1]), sent(cids[2]), email(boom, subject="boom")])
        wait_until(lambda: all(statuses(config).get(c) == "sent" for c in cids))
        assert pm.manager is not None
        wait_until(lambda: pm.manager is not None and pm.manager.stats.duplicates >= 4)
        table = json.loads(cli(config, "processes", "--json"))
        only_sent = json.loads(cli(config, "processes", "--json", "--status", "sent"))
        assert "failed" in cli(config, "processes")
        stats = pm.manager.stats

    assert {row["correlation_id"]: row["status"] for row in table} == {
        **{c: "sent" for c in cids},
        boom: "failed",
    }
    assert sorted(row["correlation_id"] for row in only_sent) == sorted(cids)
    failed = next(row for row in table if row["correlation_id"] == boom)
    assert failed["reason"] == "RuntimeError: cannot handle this e-mail"

    entries = journal(config)
    assert Counter(e[1] for e in entries).most_common(1)[0][1] == 1, "an input was journaled twice"
    assert len(entries) == 3 * 3 + 1 + 1
    assert (boom, derive_id(boom, "received"), "failed", "failed") in entries
    assert (cids[1], "approval-1", "rejected", "running") in entries
    reasons = [r.entry.payload.reason for r in iter_journal(config) if r.event.event_id == "approval-1"]
    assert reasons == ["unsigned: no signature"]  # the verifier's reason; MINI would have said "not expected"
    assert stats.handled == 11 and stats.duplicates == 4 and stats.dlq == 2

    # Commands: one ClassifyEmail and one SendEmail per process, none for the failed one.
    classify = [decode(m.value()) for m in read_topic(config, "cmd.classify")]
    send = [decode(m.value()) for m in read_topic(config, "cmd.send-email")]
    assert sorted(c.correlation_id for c in classify) == sorted(cids)
    assert sorted(c.correlation_id for c in send) == sorted(cids)

    dlq = read_topic(config, "pm.dlq")
    reasons = {dict(m.headers())["dlq.error_type"].decode(): m for m in dlq}
    assert set(reasons) == {"CodecError", "UnknownProcess"}
    poison = reasons["CodecError"]
    assert poison.key() == cids[0].encode()
    record = decode(poison.value())
    assert isinstance(record, DlqRecord) and record.payload.value == b"\x00not avro at all"
    assert dict(poison.headers())["dlq.source"].decode().startswith("email.received/")
    assert b"<ghost@x>" in dict(reasons["UnknownProcess"].headers())["dlq.reason"]


def test_rebuild_from_journal_and_refusing_a_foreign_store(topics: Config, tmp_path: object) -> None:
    config = topics
    cids = [f"<r{i}@mail.example>" for i in range(8)]
    with PmThread(config):
        publish(config, [email(c) for c in cids])
        wait_stage(config, cids, "classifying")
        publish(config, [classified(c) for c in cids[:5]])
        wait_stage(config, cids[:5], "sending")
        publish(config, [sent(c) for c in cids[:3]])
        wait_until(lambda: Counter(statuses(config).values()) == {"sent": 3, "running": 5})
    before = list_processes(config)
    timers_before = _timers(config)
    assert len(timers_before) == 3  # the three e-mails still waiting for classification

    # Delete the store: the next start rebuilds it from the journal, identical.
    shutil.rmtree(store_root(config))
    log = io.StringIO()
    with PmThread(config, log=log):
        pass
    assert list_processes(config) == before
    assert _timers(config) == timers_before
    assert "rebuilt partition" in log.getvalue()

    # The same store under another prefix belongs to another journal: refused, unless --rebuild.
    other = replace(config, topic_prefix=config.topic_prefix.rstrip(".") + "x.")
    apply_topics(other)
    shutil.copytree(store_root(config), store_root(other))
    manager = ProcessManager(other, [_mini()], log=io.StringIO())
    manager.start()
    try:
        with pytest.raises(StoreError, match="--rebuild"):
            for _ in range(100):
                manager.run_once(0.1)
    finally:
        manager.close()
    # A store that claims this journal but whose last folded record is not there: the anchor check.
    for partition, path in list_store_paths(other):
        store = PartitionStore(path, partition)
        store.set_identity({"topic": other.topic("pm.journal"), "topic_id": None})
        store.close()
    with pytest.raises(StoreError, match="journal ends before offset"), PmThread(other):
        pass
    log = io.StringIO()
    with PmThread(other, rebuild=True, log=log):
        pass
    assert list_processes(other) == []  # the other journal is empty
    assert "rebuilding store" in log.getvalue()


def _mini() -> object:
    from test_runtime_support import MINI

    return MINI


def _timers(config: Config) -> list[tuple[str, str, int]]:
    found = []
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition, read_only=True)
        try:
            found += [(t.correlation_id, t.timer_id, t.due_ms) for t in store.timers()]
        finally:
            store.close()
    return sorted(found)


def test_timers_fire_survive_restart_and_cancelled_ones_do_not_fire(topics: Config) -> None:
    config = topics
    fast, slow, cancelled = "<fast@x>", "<slow@x>", "<cancelled@x>"
    with PmThread(config):
        started = time.monotonic()
        publish(
            config, [email(fast, "fast-timer"), email(slow, "slow-timer"), email(cancelled, "slow-timer")]
        )
        wait_stage(config, [cancelled], "classifying", timeout=3)
        publish(config, [classified(cancelled)])  # cancels its timer
        wait_stage(config, [cancelled], "sending", timeout=3)
        wait_until(lambda: statuses(config).get(fast) == "escalated", timeout=15)
        assert statuses(config)[slow] == "running"
        assert sum(1 for _ in read_topic(config, "pm.timers")) == 1
    # The PM is down when the slow timer comes due; after the restart it fires anyway.
    time.sleep(max(0.0, 5.5 - (time.monotonic() - started)))
    with PmThread(config):
        wait_until(lambda: statuses(config).get(slow) == "escalated", timeout=15)
    # Timers fire from the store's timer index; the cancelled one left it: nothing there can fire.
    assert _timers_of(config, cancelled) == []
    assert statuses(config)[cancelled] == "running", journal(config)
    fired = [decode(m.value()) for m in read_topic(config, "pm.timers")]
    assert all(isinstance(f, TimerFired) for f in fired)
    assert sorted(f.correlation_id for f in fired) == sorted([fast, slow])  # once each, none cancelled
    assert all(f.occurred_at == f.payload.due_at for f in fired)
    entries = journal(config)
    assert (slow, derive_id(derive_id(slow, "classify-timeout"), "fired"), "applied", "escalated") in entries


def test_backpressure_pauses_new_emails_above_max_active(topics: Config) -> None:
    config = topics
    cids = [f"<b{i}@mail.example>" for i in range(6)]
    with PmThread(config, max_active=2) as pm:
        assert pm.manager is not None
        publish(config, [email(c) for c in cids])
        wait_until(lambda: len(statuses(config)) == 2)
        wait_until(lambda: pm.manager is not None and bool(pm.manager.paused))  # the cap holds the rest back
        running = statuses(config)
        assert len(running) == 2 and set(running.values()) == {"running"}
        assert pm.manager.active_count() == 2
        assert pm.manager.paused, "email.received should be paused"
        # Results and the end of one process keep flowing; then one more e-mail is taken.
        first = sorted(running)[0]
        publish(config, [classified(first)])
        wait_stage(config, [first], "sending")
        publish(config, [sent(first)])
        wait_until(lambda: len(statuses(config)) == 3)
        assert Counter(statuses(config).values()) == {"sent": 1, "running": 2}
        while len(statuses(config)) < len(cids) or "running" in statuses(config).values():
            current = [c for c, s in statuses(config).items() if s == "running"]
            assert len(current) <= 2
            publish(config, [classified(c) for c in current])
            wait_stage(config, current, "sending")
            publish(config, [sent(c) for c in current])
            wait_until(lambda current=current: all(statuses(config)[c] == "sent" for c in current))
        wait_until(lambda: statuses(config) == {c: "sent" for c in cids})
        assert not pm.manager.paused
        assert pm.manager.stats.deferred >= 1


def test_aborted_transaction_is_retried_without_double_effects(
    topics: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka import KafkaError, KafkaException

    config = topics
    cids = [f"<a{i}@mail.example>" for i in range(3)]
    manager = ProcessManager(config, [_mini()], log=io.StringIO())
    manager.start()
    try:
        wait_until(lambda: manager.run_once(0.1) >= 0 and manager.assignments > 0)
        real_commit = manager._commit
        failures = []

        def flaky_commit() -> None:
            if not failures:
                failures.append(1)
                raise KafkaException(KafkaError(KafkaError._FAIL, "injected", txn_requires_abort=True))
            real_commit()

        monkeypatch.setattr(manager, "_commit", flaky_commit)
        publish(config, [email(c) for c in cids])
        wait_until(lambda: manager.run_once(0.1) >= 0 and manager.stats.handled == 3)
        for _ in range(10):
            manager.run_once(0.05)
        assert manager.stats.aborts == 1 and manager.stats.handled == 3 and manager.stats.duplicates == 0
    finally:
        manager.close()
    assert statuses(config) == {c: "running" for c in cids}
    # A broker may show the aborted attempt's records (the local one does): same bytes, same IDs.
    copies: dict[str, set[bytes]] = {}
    for message in read_topic(config, "pm.journal"):
        copies.setdefault(decode(message.value()).event_id, set()).add(message.value())
    assert len(copies) == 3 and all(len(v) == 1 for v in copies.values())
    assert len({decode(m.value()).event_id for m in read_topic(config, "cmd.classify")}) == 3
    # A rebuild folds every copy once.
    shutil.rmtree(store_root(config))
    with PmThread(config):
        pass
    assert statuses(config) == {c: "running" for c in cids}
    assert all(len(_timers_of(config, c)) == 1 for c in cids)


def _timers_of(config: Config, cid: str) -> list[tuple[str, str, int]]:
    return [t for t in _timers(config) if t[0] == cid]


def test_a_pm_crash_is_raised_by_the_test_harness_not_swallowed(topics: Config) -> None:
    pm = PmThread(topics)
    pm.__enter__()
    assert pm.manager is not None

    def boom(timeout: float = 0.2) -> int:
        raise RuntimeError("injected crash")

    pm.manager.run_once = boom  # type: ignore[method-assign]
    wait_until(lambda: pm.error is not None)
    with pytest.raises(AssertionError, match="the PM crashed: RuntimeError: injected crash"):
        pm.close()
