"""`pm emit email` and `pm.client` against the real local broker."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from customer_email.addresses import parse_address
from customer_email.events import EmailReceived, FetchOrder
from customer_email.publisher import EmailPublisher, InvalidEmail, email_event
from pm.cli import main
from pm.client import RecordTooLarge, produce_event
from pm.codec import decode
from pm.config import Config
from pm.events import DlqRecord, derive_id
from pm.kafka import make_consumer, make_producer

PARTITIONS = 6  # email.received in topics.yaml


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Java's DefaultPartitioner for keyed records: toPositive(murmur2(key)) % partitions."""
    m, h = 0x5BD1E995, (0x9747B28C ^ len(key)) & 0xFFFFFFFF
    for i in range(len(key) // 4):
        k = int.from_bytes(key[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = key[len(key) & ~3 :]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def test_murmur2_matches_java_reference() -> None:
    # Values from Kafka's UtilsTest.testMurmur2 (signed Java ints).
    for text, expected in {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
    }.items():
        assert murmur2_partition(text.encode(), 2**31) == expected & 0x7FFFFFFF


def consume(config: Config, topic: str, count: int, timeout: float = 20.0) -> list[Message]:
    consumer = make_consumer(config, "test-emit", f"{config.topic_prefix}reader-{topic}")
    physical = config.topic(topic)
    partitions = consumer.list_topics(physical, timeout=10).topics[physical].partitions
    # assign, not subscribe: no group join, so the test does not wait for a rebalance
    consumer.assign([TopicPartition(physical, p, OFFSET_BEGINNING) for p in partitions])
    found: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                found.append(msg)
    finally:
        consumer.close()
    return found


def _email(n: int, **extra: object) -> dict[str, object]:
    return {
        "message_id": f"<msg-{n}@mail.example.com>",
        "sender": f"customer{n}@example.org",
        "recipient": "support@shop.example.com",
        "subject": f"Order question {n}",
        "body": "My order hasn't arrived and I need it for Monday. Can you refund shipping?",
        **extra,
    }


_PRINTED = re.compile(r"^line (\d+): (\S+) -> (\S+)\[(\d+)\]@(\d+)$")


def test_emit_file_publishes_good_lines_and_reports_bad_ones(
    topics: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        json.dumps(
            _email(1, thread_id="thread-A", received_at="2026-11-20T09:30:15.123+01:00", order_id="A-1001")
        ),
        json.dumps(_email(2, labels=["vip"])),
        "",
        "{not json",
        json.dumps(_email(4, sender="x")),
        json.dumps(_email(5, priority="high")),
        json.dumps([1, 2]),
        json.dumps(_email(7, thread_id="thread-A", received_at="not a date")),
        json.dumps(_email(8, thread_id="thread-A")),
    ]
    path = tmp_path / "emails.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc = main(
        [
            "emit",
            "email",
            "--file",
            str(path),
            "--bootstrap",
            topics.bootstrap,
            "--prefix",
            topics.topic_prefix,
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1
    printed = [_PRINTED.match(line) for line in out.splitlines()]
    assert all(printed), out
    assert [int(m.group(1)) for m in printed if m] == [1, 2, 9]
    assert "line 4: not JSON" in err
    assert re.search(r"line 5: invalid e-mail: sender: .*at least 3", err)
    assert re.search(r"line 6: invalid e-mail: priority: Extra inputs", err)
    assert "line 7: invalid e-mail" in err
    assert re.search(r"line 8: invalid e-mail: received_at", err)
    assert "line 3" not in err + out  # blank lines are not e-mails

    messages = consume(topics, "email.received", 3)
    assert len(messages) == 3
    expected = {1: "thread-A", 2: "<msg-2@mail.example.com>", 9: "thread-A"}
    for match in printed:
        assert match
        line, cid, topic, partition, offset = match.groups()
        assert cid == expected[int(line)]
        assert topic == topics.topic("email.received")
        assert int(partition) == murmur2_partition(cid.encode(), PARTITIONS)  # where the PM expects it
        msg = next(m for m in messages if m.partition() == int(partition) and m.offset() == int(offset))
        assert msg.key() == cid.encode()
        event = decode(msg.value())
        assert isinstance(event, EmailReceived)
        assert event.correlation_id == cid
        assert event.event_id == derive_id("email", event.payload.message_id)
    events = {
        e.payload.message_id: e for e in (decode(m.value()) for m in messages) if isinstance(e, EmailReceived)
    }
    one = events["<msg-1@mail.example.com>"]
    assert one.payload.received_at == datetime(2026, 11, 20, 8, 30, 15, 123000, tzinfo=UTC)
    assert one.occurred_at == one.payload.received_at
    assert one.payload.order_id == "A-1001"
    assert events["<msg-2@mail.example.com>"].payload.labels == ["vip"]
    assert (
        abs((datetime.now(UTC) - events["<msg-2@mail.example.com>"].payload.received_at).total_seconds()) < 60
    )


def test_emit_dead_letters_spoofed_and_broken_lines_and_publishes_the_rest(
    topics: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spoofed = json.dumps(_email(2, sender='"victim@shop.example" <attacker@evil.example>'))
    listed = json.dumps(_email(3, recipient="support@shop.example.com, attacker@evil.example"))
    lines = [
        json.dumps(_email(1, sender="Jane Doe <Jane@Example.com>")),  # a display name is fine
        spoofed,
        listed,
        '{"message_id": ',
        json.dumps(_email(5)),
    ]
    path = tmp_path / "emails.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"sender": "\xff"}\n')  # line 6: not UTF-8
    rc = main(
        [
            "emit",
            "email",
            "--file",
            str(path),
            "--bootstrap",
            topics.bootstrap,
            "--prefix",
            topics.topic_prefix,
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1
    assert [int(m.group(1)) for m in map(_PRINTED.match, out.splitlines()) if m] == [1, 5]
    assert "line 2: invalid e-mail: sender: display name 'victim@shop.example' looks like an address" in err
    assert "line 3: invalid e-mail: recipient: 2 addresses, exactly one allowed" in err
    assert "line 4: not JSON" in err and "line 6: not JSON: not UTF-8" in err
    dlq = topics.topic("pm.dlq")
    assert re.search(rf"line 2: dead-lettered -> {re.escape(dlq)}\[\d+\]@\d+", err)
    assert f"2 published, 4 bad line(s) (4 to {dlq}), 0 not delivered" in err

    published = [decode(m.value() or b"") for m in consume(topics, "email.received", 2)]
    assert sorted(e.payload.message_id for e in published if isinstance(e, EmailReceived)) == [
        "<msg-1@mail.example.com>",
        "<msg-5@mail.example.com>",
    ]
    dead: dict[int, tuple[DlqRecord, dict[str, str | bytes | None]]] = {}
    for message in consume(topics, "pm.dlq", 4):
        record = decode(message.value() or b"")
        assert isinstance(record, DlqRecord)
        dead[record.payload.source_offset] = (record, dict(message.headers() or []))
    assert sorted(dead) == [2, 3, 4, 6]
    record, headers = dead[2]
    assert record.payload.source_topic == "email.received" and record.payload.source_partition == -1
    assert record.payload.key is None and record.payload.value == spoofed.encode()
    assert record.payload.error_type == "InvalidEmail" and record.payload.failed_by == "pm emit"
    assert record.payload.reason.startswith("invalid e-mail: sender: display name 'victim@shop.example'")
    assert headers["dlq.error_type"] == b"InvalidEmail" and headers["dlq.source"] == b"email.received/-1/2"
    assert headers["dlq.reason"] == record.payload.reason.encode()
    assert (
        dead[3][0].payload.value == listed.encode() and "recipient: 2 addresses" in dead[3][0].payload.reason
    )
    assert dead[4][0].payload.error_type == "InvalidJson" and dead[4][0].payload.value == b'{"message_id": '
    assert dead[6][0].payload.value == b'{"sender": "\xff"}'  # the bytes as read, not a decoding of them


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("sender", '"victim@shop.example" <attacker@evil.example>', "sender: display name"),
        ("sender", "attacker@evil.example, victim@shop.example", "sender: 2 addresses, exactly one allowed"),
        ("sender", "jane@example.com\r\nBcc: x@evil.example", "sender: control character U+000D"),
        ("recipient", "support@localhost", "recipient: domain 'localhost' has no dot"),
    ],
)
def test_email_event_refuses_spoofed_addresses(field: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidEmail, match=re.escape(reason)):
        email_event(_email(1, **{field: value}))


def test_email_event_keeps_a_display_name_as_given() -> None:
    event = email_event(_email(1, sender="Jane Doe <Jane@Example.com>"))
    assert event.payload.sender == "Jane Doe <Jane@Example.com>"  # published as sent; parsed where used
    assert parse_address(event.payload.sender) == "jane@example.com"


def test_emit_from_stdin_all_good_exits_zero(
    topics: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(_email(n)) for n in range(5)) + "\n"))
    rc = main(
        ["emit", "email", "--file", "-", "--bootstrap", topics.bootstrap, "--prefix", topics.topic_prefix]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(out.splitlines()) == 5
    assert "5 published, 0 bad line(s)" in err
    assert len(consume(topics, "email.received", 5)) == 5


def test_emit_missing_file_is_a_clear_error(topics: Config, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["emit", "email", "--file", "/nonexistent/e.jsonl", "--bootstrap", topics.bootstrap])
    assert rc == 2
    assert "cannot read /nonexistent/e.jsonl" in capsys.readouterr().err


def test_publisher_api_is_idempotent_by_message_id(topics: Config) -> None:
    with EmailPublisher(topics) as publisher:
        first = publisher.publish(_email(1, received_at="2026-11-20T09:30:00Z"))
        again = publisher.publish(_email(1, received_at="2026-11-20T09:30:00Z"))
        many = publisher.publish_many([_email(2), _email(3, thread_id="t-3")])
        with pytest.raises(InvalidEmail, match="message_id"):
            publisher.publish(_email(4, message_id=""))
    assert first.event_id == again.event_id == derive_id("email", "<msg-1@mail.example.com>")
    assert (first.partition, first.offset + 1) == (again.partition, again.offset)
    assert [d.correlation_id for d in many] == ["<msg-2@mail.example.com>", "t-3"]
    messages = consume(topics, "email.received", 4)
    values = [m.value() for m in messages if m.key() == b"<msg-1@mail.example.com>"]
    assert len(values) == 2 and values[0] == values[1]  # byte-identical: the PM dedupes by event_id


def test_email_event_builds_the_envelope() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = email_event(_email(1, thread_id="t"), now=now)
    assert (event.correlation_id, event.causation_id, event.occurred_at) == ("t", None, now)
    with pytest.raises(InvalidEmail, match="expected a JSON object"):
        email_event([1, 2])  # type: ignore[arg-type]


def test_produce_event_routes_commands_and_overrides_keys(topics: Config) -> None:
    producer = make_producer(topics, "test")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    command = FetchOrder(
        event_id="e1",
        correlation_id="c-1",
        occurred_at=at,
        payload={"command_id": "x", "attempt": 1, "order_id": "A"},
    )
    dlq = DlqRecord(
        event_id="e2",
        correlation_id="c-1",
        occurred_at=at,
        payload={
            "source_topic": "step.results",
            "source_partition": 0,
            "source_offset": 1,
            "key": b"orig",
            "value": b"junk",
            "reason": "bad",
            "error_type": "CodecError",
            "failed_by": "test",
        },
    )
    produce_event(producer, topics, command, headers=[("x-test", b"1")])
    produce_event(producer, topics, dlq, key=b"orig")
    assert producer.flush(10) == 0
    (cmd,) = consume(topics, "cmd.fetch-order", 1)
    assert cmd.key() == b"c-1" and decode(cmd.value()) == command
    assert ("x-test", b"1") in (cmd.headers() or [])
    (dead,) = consume(topics, "pm.dlq", 1)
    assert dead.key() == b"orig" and decode(dead.value()) == dlq


def test_an_e_mail_over_the_record_limit_is_dead_lettered_cut_and_the_rest_published(
    topics: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = json.dumps(_email(1) | {"body": "x" * 1_200_000})
    path = tmp_path / "emails.jsonl"
    path.write_text(huge + "\n" + json.dumps(_email(2)) + "\n")
    rc = main(["emit", "email", "--file", str(path), "--bootstrap", topics.bootstrap, "--prefix", topics.topic_prefix])
    _, err = capsys.readouterr()
    assert rc == 1 and "line 1: EmailReceived of" in err and "over the 1000000 bytes" in err
    [message] = consume(topics, "pm.dlq", 1)
    record = decode(message.value() or b"")
    assert isinstance(record, DlqRecord) and record.payload.error_type == "RecordTooLarge"
    assert len(record.payload.value or b"") == 64 * 1024 and "cut to 65536" in record.payload.reason
    [published] = consume(topics, "email.received", 1)
    assert decode(published.value() or b"").correlation_id == "<msg-2@mail.example.com>"
    with pytest.raises(RecordTooLarge):
        EmailPublisher(topics).publish(_email(3) | {"body": "x" * 1_200_000})
