"""Input records are trusted for their key only when it is their correlation ID, on its partition.

Unit table for `pm.integrity.record_problem`, then the runtime on a real broker: a mis-keyed,
null-keyed, non-UTF-8-keyed, huge-keyed or misplaced record on each PM input topic, and start
events a definition refuses, all end on pm.dlq; the partition keeps flowing behind them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message
from test_runtime_support import (
    MiniProcess,
    MiniState,
    PmThread,
    classified,
    email,
    read_topic,
    stages,
    wait_until,
)

from customer_email.events import EmailReceived
from pm.codec import decode, encode
from pm.config import Config
from pm.events import ApprovalDecided, ApprovalDecidedPayload, DlqRecord, Event, TimerFired
from pm.integrity import KEY_MISMATCH, MISSING_KEY, SHOWN_LIMIT, WRONG_PARTITION, record_problem, shown
from pm.journal import iter_journal
from pm.kafka import make_producer
from pm.partitioner import partition_for
from pm.process import InvalidInput
from pm.store import TimerEntry
from pm.timers import fired_event
from pm.topics import load_layout

N = 6  # partitions of every PM input in topics.yaml (asserted below)
CID = "<order-42@mail.example>"
HOME = partition_for(CID.encode(), N)

# ---------------------------------------------------------------- the pure check


@pytest.mark.parametrize(
    ("key", "partition", "error_type", "in_reason"),
    [
        (CID.encode(), HOME, None, None),
        (None, HOME, MISSING_KEY, [repr(CID)]),
        (b"\xff\xfe<order-42", HOME, KEY_MISMATCH, ["not UTF-8", repr(b"\xff\xfe<order-42"), repr(CID)]),
        (b"<order-43@mail.example>", HOME, KEY_MISMATCH, [repr("<order-43@mail.example>"), repr(CID)]),
        (b"", HOME, KEY_MISMATCH, ["''", repr(CID)]),
        (CID.upper().encode(), HOME, KEY_MISMATCH, [repr(CID.upper())]),
        (CID.encode(), (HOME + 1) % N, WRONG_PARTITION, [f"partition {HOME} of {N}", f"on {(HOME + 1) % N}"]),
        (CID.encode(), N + 2, WRONG_PARTITION, [f"partition {HOME} of {N}", f"on {N + 2}"]),  # added later
    ],
    ids=["sound", "missing", "not-utf8", "other-id", "empty", "case", "wrong-partition", "beyond-layout"],
)
def test_record_problem_table(
    key: bytes | None, partition: int, error_type: str | None, in_reason: list[str] | None
) -> None:
    problem = record_problem(key, partition, N, CID)
    if error_type is None:
        assert problem is None
        return
    assert problem is not None
    assert problem[0] == error_type
    for part in in_reason or []:
        assert part in problem[1]


def test_record_problem_is_sound_for_every_partition_a_key_hashes_to() -> None:
    for n in (1, 2, 3, 6, 12):
        for i in range(50):
            cid = f"<m{i}@x>"
            assert record_problem(cid.encode(), partition_for(cid.encode(), n), n, cid) is None


def test_huge_and_hostile_keys_are_echoed_bounded() -> None:
    huge = b"<" + b"A" * 1_000_000 + b">"
    problem = record_problem(huge, 0, N, CID)
    assert problem is not None and problem[0] == KEY_MISMATCH
    assert len(problem[1]) < 4 * SHOWN_LIMIT + 200
    assert f"({len(huge)} bytes)" in problem[1] or f"({len(huge)} chars)" in problem[1]
    # A huge correlation ID that is also the key: only the partition is wrong, still bounded.
    big = "x" * 100_000
    problem = record_problem(big.encode(), (partition_for(big.encode(), N) + 1) % N, N, big)
    assert problem is not None and problem[0] == WRONG_PARTITION and len(problem[1]) < 400
    # Control characters and newlines come out escaped (repr), never raw into headers or logs.
    problem = record_problem(b"evil\r\nX-Header: 1\x1b[2J", 0, N, CID)
    assert problem is not None and "\n" not in problem[1] and "\x1b" not in problem[1]
    problem = record_problem(None, 0, N, "a\nb" * 1000)
    assert problem is not None and "\n" not in problem[1] and len(problem[1]) < 400


def test_shown_keeps_short_values_whole() -> None:
    assert shown("abc") == "'abc'"
    assert shown(b"\x00") == "b'\\x00'"
    assert shown("a" * (SHOWN_LIMIT + 1)) == repr("a" * SHOWN_LIMIT) + f"... ({SHOWN_LIMIT + 1} chars)"


# ---------------------------------------------------------------- the runtime


class RefusingMini(MiniProcess):
    """MINI, whose `initial_state` refuses subject "refuse" (InvalidInput) and crashes on "crash"."""

    def initial_state(self, event: Event) -> MiniState:
        if isinstance(event, EmailReceived):
            if event.payload.subject == "refuse":
                raise InvalidInput(f"subject {event.payload.subject!r} is not accepted")
            if event.payload.subject == "crash":
                raise RuntimeError("initial_state bug")
        return super().initial_state(event)


def _ids(prefix: str, n: int, *, on: int | None = None, off: int | None = None) -> list[str]:
    """`n` correlation IDs hashing to partition `on` (or to anything but `off`)."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        cid = f"<{prefix}-{i}@mail.example>"
        p = partition_for(cid.encode(), N)
        if (on is None or p == on) and (off is None or p != off):
            found.append(cid)
        i += 1
    return found


class Sender:
    """Produces raw records and remembers where each landed (partition, offset)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.producer = make_producer(config, "test")

    def send(
        self, topic: str, key: str | bytes | None, value: bytes, partition: int | None = None
    ) -> tuple[int, int]:
        placed: list[tuple[int, int]] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            placed.append((int(msg.partition() or 0), int(msg.offset() or 0)))

        kwargs: dict[str, Any] = {"partition": partition} if partition is not None else {}
        self.producer.produce(self.config.topic(topic), key=key, value=value, on_delivery=delivered, **kwargs)
        assert self.producer.flush(10) == 0
        return placed[0]

    def event(
        self, event: Event, key: str | bytes | None = None, partition: int | None = None
    ) -> tuple[int, int]:
        return self.send(event.topic, event.correlation_id if key is None else key, encode(event), partition)


def _approval(cid: str, event_id: str) -> ApprovalDecided:
    now = datetime.now(UTC)
    return ApprovalDecided(
        event_id=event_id,
        correlation_id=cid,
        occurred_at=now,
        payload=ApprovalDecidedPayload(
            approval_id="a1",
            decision="approve",
            reviewer="rita",
            draft_hash="0" * 64,
            policy_version="v1",
            decided_at=now,
        ),
    )


def test_records_not_keyed_and_placed_by_correlation_id_go_to_the_dlq_and_the_partition_flows(
    topics: Config,
) -> None:
    config = topics
    layout = load_layout()
    assert {
        layout.spec(t).partitions for t in ("email.received", "step.results", "approvals", "pm.timers")
    } == {N}
    p = 2  # every bad record sits on this partition of its topic; good ones follow it there
    good, timed = _ids("good", 2, on=p)
    stranger = _ids("stranger", 1, off=p)[0]  # hashes elsewhere: forced onto p it is misplaced
    wrong_key = _ids("wrong-key", 1, on=p)[0]  # a key that does hash to p, but is not the ID
    refused, crashing = _ids("refuse", 2, on=p)
    huge_key = b"<" + b"H" * 200_000 + b">"
    producer = Sender(config)
    bad: dict[tuple[str, int, int], tuple[str, list[str]]] = {}  # position -> (error type, reason parts)
    bad_ids: set[str] = set()

    def expect(topic: str, at: tuple[int, int], event: Event | None, error_type: str, *parts: str) -> None:
        assert at[0] == p
        bad[(topic, *at)] = (error_type, list(parts))
        if event is not None:
            bad_ids.add(event.event_id)

    with PmThread(config, definitions=[RefusingMini()]) as pm:
        # email.received: mis-keyed, null key, non-UTF-8 key, huge key, misplaced, refused, crashing.
        e = email(stranger).model_copy(update={"event_id": "bad-mis-keyed"})
        expect(
            "email.received",
            producer.event(e, key=wrong_key),
            e,
            KEY_MISMATCH,
            repr(wrong_key),
            repr(stranger),
        )
        e = email(stranger).model_copy(update={"event_id": "bad-null-key"})
        expect("email.received", producer.send(e.topic, None, encode(e), p), e, MISSING_KEY, repr(stranger))
        e = email(stranger).model_copy(update={"event_id": "bad-binary-key"})
        at = producer.event(e, key=b"\xc3\x28" + stranger.encode(), partition=p)
        expect("email.received", at, e, KEY_MISMATCH, "not UTF-8")
        e = email(stranger).model_copy(update={"event_id": "bad-huge-key"})
        expect(
            "email.received",
            producer.event(e, key=huge_key, partition=p),
            e,
            KEY_MISMATCH,
            f"({len(huge_key)}",
        )
        e = email(stranger).model_copy(update={"event_id": "bad-misplaced"})
        home = partition_for(stranger.encode(), N)
        at = producer.event(e, partition=p)
        expect("email.received", at, e, WRONG_PARTITION, f"partition {home} of {N}", f"the record is on {p}")
        e = email(refused, subject="refuse")
        expect(
            "email.received", producer.event(e), e, "InvalidInput", "mini: subject 'refuse' is not accepted"
        )
        e = email(crashing, subject="crash")
        expect(
            "email.received", producer.event(e), e, "RuntimeError", "mini.initial_state: initial_state bug"
        )
        # step.results, approvals, pm.timers: each checked the same way.
        c = classified(good, intent="hostile").model_copy(update={"event_id": "bad-result"})
        expect("step.results", producer.event(c, key=wrong_key), c, KEY_MISMATCH, repr(wrong_key))
        a = _approval(stranger, "bad-approval")
        expect("approvals", producer.event(a, partition=p), a, WRONG_PARTITION, f"partition {home} of {N}")
        t = fired_event(TimerEntry(timed, "forged-timer", "classify-timeout", 0))
        expect(
            "pm.timers",
            producer.event(t, key=stranger, partition=p),
            t,
            KEY_MISMATCH,
            repr(stranger),
            repr(timed),
        )

        # Correctly keyed records after them, on the same partitions: all decided.
        first_email = producer.event(email(good))
        producer.event(email(timed, subject="fast-timer"))  # its TimerFired comes on pm.timers/p
        wait_until(lambda: stages(config).get(good) == "classifying")
        result = producer.event(classified(good))
        approval = producer.event(_approval(good, "good-approval"))
        assert {first_email[0], result[0], approval[0]} == {p}
        wait_until(lambda: stages(config).get(good) == "sending")
        wait_until(lambda: stages(config).get(timed) == "timed-out", timeout=15)
        wait_until(lambda: "good-approval" in _journaled(config))
        dlq = wait_until(lambda: _at_least(read_topic(config, "pm.dlq"), len(bad)))
        assert pm.manager is not None
        stats = pm.manager.stats

    records = {}
    for message in dlq:
        record = decode(message.value())
        assert isinstance(record, DlqRecord)
        payload = record.payload
        records[(payload.source_topic, payload.source_partition, payload.source_offset)] = (record, message)
    assert set(records) == set(bad)
    for position, (error_type, parts) in bad.items():
        record, message = records[position]
        headers = dict(message.headers())
        assert record.payload.error_type == error_type == headers["dlq.error_type"].decode(), position
        assert record.payload.reason == headers["dlq.reason"].decode()
        for part in parts:
            assert part in record.payload.reason, (position, record.payload.reason)
        assert len(record.payload.reason) < 500, position
        assert record.payload.failed_by == "pm"
    huge = next(r for r, _m in records.values() if r.payload.key == huge_key)  # the original, kept whole
    assert huge.payload.error_type == KEY_MISMATCH
    assert stats.dlq == len(bad)

    journaled = _journaled(config)
    assert not bad_ids & set(journaled), "a refused record was decided"
    assert set(journaled.values()) == {good, timed}
    # The journal and the timer stay where the key says.
    for row in iter_journal(config, idle_timeout=10):
        assert row.partition == partition_for(row.entry.correlation_id.encode(), N)
    fired = [m for m in read_topic(config, "pm.timers") if isinstance(decode(m.value()), TimerFired)]
    ours = [m for m in fired if decode(m.value()).event_id != t.event_id]
    assert [(m.key(), m.partition()) for m in ours] == [(timed.encode(), p)]


def _at_least(found: list[Message], n: int) -> list[Message] | None:
    return found if len(found) >= n else None


def _journaled(config: Config) -> dict[str, str]:
    """Input event ID -> correlation ID of every journal entry."""
    return {r.event.event_id: r.entry.correlation_id for r in iter_journal(config, idle_timeout=10)}
