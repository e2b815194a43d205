"""The review tool against a real broker: requests published here, listed and decided via CLI and API."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from customer_email.approval_request import approval_payload
from customer_email.events import Draft, Email, Order
from pm.approvals import ApprovalVerifier, build_decision, ensure_local_key
from pm.cli import main
from pm.codec import decode, encode
from pm.config import Config
from pm.events import ApprovalDecided, ApprovalReminder, ApprovalReminderPayload, ApprovalRequested, Event
from pm.kafka import make_consumer, make_producer
from pm.review import ReviewClient, ReviewError, UnknownApproval

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def request(
    n: int, correlation_id: str | None = None, *, deadline: timedelta = timedelta(hours=4)
) -> ApprovalRequested:
    correlation_id = correlation_id or f"<mail-{n}-{uuid.uuid4().hex[:6]}@example.com>"
    requested_at = T0 + timedelta(seconds=n)
    email = Email(
        message_id=correlation_id,
        sender="ana@example.net",
        recipient="support@example.com",
        subject=f"Refund for order {n}",
        body="My parcel never arrived. I want my money back.",
        received_at=requested_at - timedelta(seconds=30),
        order_id=f"A-{n}",
    )
    order = Order(
        order_id=f"A-{n}",
        customer_email="ana@example.net",
        customer_name="Ana",
        carrier="DHL",
        status="lost",
        total_cents=4990,
        shipping_cost_cents=490,
    )
    draft = Draft(
        subject=f"Re: Refund for order {n}",
        body="Dear Ana,\nwe refund the shipping cost of 4.90 USD.\nSupport",
        order_id=f"A-{n}",
        refund_cents=490,
        promises=["refund_shipping"],
    )
    return ApprovalRequested(
        event_id=str(uuid.uuid4()),
        correlation_id=correlation_id,
        causation_id=str(uuid.uuid4()),
        occurred_at=requested_at,
        payload=approval_payload(
            approval_id=f"appr-{n}-{uuid.uuid4().hex[:8]}",
            policy_version="refund-v3",
            email=email,
            intent="refund_request",
            risk="medium",
            order=order,
            draft=draft,
            findings=[],
            reasons=["refund intent"],
            requested_at=requested_at,
            deadline=requested_at + deadline,
        ),
    )


def publish(config: Config, *events: Event, topic: str = "approvals.requested") -> None:
    producer: Producer = make_producer(config, "test")
    errors: list[KafkaError] = []
    for event in events:
        producer.produce(
            config.topic(topic),
            key=event.correlation_id.encode(),
            value=encode(event),
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert producer.flush(10) == 0 and not errors


def decisions_on_topic(config: Config, expected: int) -> list[tuple[bytes, int, ApprovalDecided]]:
    """Read the approvals topic until `expected` records came (bounded in time)."""
    topic = config.topic("approvals")
    consumer = make_consumer(config, "test", f"g-{uuid.uuid4().hex}")
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    found: list[tuple[bytes, int, ApprovalDecided]] = []
    try:
        for _ in range(100):
            for msg in consumer.consume(100, timeout=0.1):
                value, key, partition = msg.value(), msg.key(), msg.partition()
                assert msg.error() is None and value is not None and key is not None and partition is not None
                event = decode(value)
                assert isinstance(event, ApprovalDecided)
                found.append((key, partition, event))
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    assert len(found) == expected
    return found


def java_murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's Java DefaultPartitioner for keyed records, written out independently of librdkafka."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(key)
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = key[length - rest :]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


@pytest.fixture
def review(topics: Config) -> Config:
    """Topics created, a local signing key, alice and bob allowed."""
    config = replace(topics, reviewers=("alice", "bob"))
    ensure_local_key(config)
    return config


def cli(config: Config, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(
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
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_is_pending_requests_oldest_first(review: Config, capsys: pytest.CaptureFixture[str]) -> None:
    newer, older, decided, stale = request(3), request(1), request(2), request(0)
    superseding = request(4, stale.correlation_id)
    reminder = ApprovalReminder(
        event_id=str(uuid.uuid4()),
        correlation_id=older.correlation_id,
        occurred_at=T0 + timedelta(minutes=5),
        payload=ApprovalReminderPayload(
            approval_id=older.payload.approval_id,
            requested_at=older.payload.requested_at,
            deadline=older.payload.deadline,
            reminder=1,
        ),
    )
    # `older` twice with one event ID: the broker may show an aborted transaction's copy.
    publish(review, newer, decided, stale, older, older, superseding, reminder)
    ReviewClient(review).approve(decided.payload.approval_id, "alice")

    code, out, _ = cli(review, "approvals", "list", "--json", capsys=capsys)
    assert code == 0
    listed = json.loads(out)
    assert [item["approval_id"] for item in listed] == [
        older.payload.approval_id,
        newer.payload.approval_id,
        superseding.payload.approval_id,
    ]
    first = listed[0]
    assert first["correlation_id"] == older.correlation_id
    assert first["requested_at"] == older.payload.model_dump(mode="json")["requested_at"]
    assert first["proposal"] == json.loads(older.payload.proposal)
    assert first["proposal"]["body"] == "Dear Ana,\nwe refund the shipping cost of 4.90 USD.\nSupport"
    assert first["context"]["email"]["sender"] == "ana@example.net" and first["title"].startswith("Reply to")
    assert first["draft_hash"] == older.payload.draft_hash
    assert first["reminders"] == 1 and first["status"] == "pending" and first["expired"] is False

    code, out, _ = cli(review, "approvals", "list", capsys=capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(older.payload.approval_id)

    everything = {r.approval_id: r.status for r in ReviewClient(review).approvals()}
    assert everything[decided.payload.approval_id] == "decided"
    assert everything[stale.payload.approval_id] == "superseded"


def test_empty_topics_list_nothing(review: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert ReviewClient(review).pending() == []
    code, out, _ = cli(review, "approvals", "list", "--json", capsys=capsys)
    assert code == 0 and json.loads(out) == []


def test_approve_via_cli_publishes_a_signed_decision_keyed_for_the_pm(
    review: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    req = request(1)
    publish(review, req)
    code, out, _ = cli(review, "approvals", "show", req.payload.approval_id, capsys=capsys)
    body = json.loads(req.payload.proposal)["body"]
    assert code == 0 and body.splitlines()[1] in out and req.correlation_id in out

    code, out, err = cli(
        review, "approvals", "approve", req.payload.approval_id, "--reviewer", "alice", capsys=capsys
    )
    assert code == 0, err
    assert out.startswith(f"published ApprovalDecided approve for approval {req.payload.approval_id}")
    printed = json.loads(out[out.index("{") :])

    [(key, partition, decided)] = decisions_on_topic(review, 1)
    assert key == req.correlation_id.encode("utf-8")
    assert partition == java_murmur2_partition(key, 6)
    assert printed["event_id"] == decided.event_id
    p = decided.payload
    assert (p.approval_id, p.decision, p.reviewer) == (req.payload.approval_id, "approve", "alice")
    assert (p.draft_hash, p.policy_version) == (req.payload.draft_hash, req.payload.policy_version)
    assert decided.causation_id == req.event_id and decided.correlation_id == req.correlation_id
    assert ApprovalVerifier(review)(decided) is None

    # Decided now: gone from the list, and a second decision is refused unless forced.
    assert ReviewClient(review).pending() == []
    code, _, err = cli(
        review, "approvals", "approve", req.payload.approval_id, "--reviewer", "bob", capsys=capsys
    )
    assert code == 2 and "already decided (approve by alice" in err
    code, _, err = cli(
        review, "approvals", "approve", req.payload.approval_id, "--reviewer", "bob", "--force", capsys=capsys
    )
    assert code == 0, err
    assert len(decisions_on_topic(review, 2)) == 2


def test_reject_and_edit_via_cli(
    review: Config, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rejected, edited, piped = request(1), request(2), request(3)
    publish(review, rejected, edited, piped)

    code, out, err = cli(
        review, "approvals", "reject", rejected.payload.approval_id, "--reviewer", "bob",
        "--reason", "we do not refund lost parcels before the carrier confirms", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    reply = tmp_path / "reply.txt"
    reply.write_text("Dear Ana,\nwe refund 4.90 USD shipping — sorry for the wait.\n", encoding="utf-8")
    code, out, err = cli(
        review, "approvals", "edit", edited.payload.approval_id, "--reviewer", "alice", "--file", str(reply),
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", io.StringIO("Piped reply body"))
    code, out, err = cli(
        review,
        "approvals",
        "edit",
        piped.payload.approval_id,
        "--reviewer",
        "alice",
        "--file",
        "-",
        capsys=capsys,
    )
    assert code == 0, err

    found = {d.payload.approval_id: d for _, _, d in decisions_on_topic(review, 3)}
    check = ApprovalVerifier(review)
    r = found[rejected.payload.approval_id].payload
    assert r.decision == "reject" and r.reason == "we do not refund lost parcels before the carrier confirms"
    assert r.edited_body is None
    e = found[edited.payload.approval_id].payload
    assert e.decision == "edit" and e.edited_body == reply.read_text(encoding="utf-8")
    assert found[piped.payload.approval_id].payload.edited_body == "Piped reply body"
    assert all(check(d) is None for d in found.values())


def test_bad_input_is_refused_with_a_message(review: Config, capsys: pytest.CaptureFixture[str]) -> None:
    req = request(1)
    publish(review, req)
    code, _, err = cli(review, "approvals", "approve", "no-such-id", "--reviewer", "alice", capsys=capsys)
    assert code == 2 and "no approval request 'no-such-id'" in err
    code, _, err = cli(review, "approvals", "show", "no-such-id", capsys=capsys)
    assert code == 2 and "no approval request" in err
    code, _, err = cli(
        review,
        "approvals",
        "reject",
        req.payload.approval_id,
        "--reviewer",
        "alice",
        "--reason",
        " ",
        capsys=capsys,
    )
    assert code == 2 and "needs a reason" in err
    code, _, err = cli(
        review,
        "approvals",
        "approve",
        req.payload.approval_id,
        "--reviewer",
        "a",
        "--key-id",
        "nope",
        capsys=capsys,
    )
    assert code == 2 and "no approval key 'nope'" in err
    assert ReviewClient(review).pending()[0].approval_id == req.payload.approval_id  # nothing was published


def test_expired_request_is_flagged_and_not_decided_without_force(review: Config) -> None:
    req = request(1, deadline=timedelta(seconds=1))  # T0 is ten minutes ago
    publish(review, req)
    client = ReviewClient(review)
    [pending] = client.pending()
    assert pending.expired() and pending.to_json()["expired"] is True
    with pytest.raises(ReviewError, match="expired"):
        client.approve(req.payload.approval_id, "alice")
    published = client.approve(req.payload.approval_id, "alice", force=True)
    assert published.event.payload.approval_id == req.payload.approval_id


def test_python_api_and_unsigned_tool_errors(topics: Config) -> None:
    config = replace(topics, approval_keys={"rot-2": "new", "rot-1": "old"}, reviewers=("alice",))
    req = request(1)
    publish(config, req)
    client = ReviewClient(config, key_id="rot-1")
    with pytest.raises(UnknownApproval):
        client.show("missing")
    published = client.reject(req.payload.approval_id, "alice", "no")
    assert published.event.payload.key_id == "rot-1"
    assert published.topic == config.topic("approvals")
    [(_, partition, decided)] = decisions_on_topic(config, 1)
    assert partition == published.partition and decided == published.event
    assert ApprovalVerifier(config)(decided) is None
    assert ApprovalVerifier(replace(config, approval_keys={"rot-2": "new"}))(decided) is not None


def test_keygen_cli_creates_the_key_once(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(config, "approvals", "keygen", "--reviewer", "carol", capsys=capsys)
    assert code == 0 and "generated approval signing key" in err and "carol" in err
    key_id = out.strip()
    assert key_id.startswith("local-")
    code, out, err = cli(config, "approvals", "keygen", capsys=capsys)
    assert code == 0 and out.strip() == key_id and "existing" in err


def test_missing_topics_are_reported(config: Config) -> None:
    with pytest.raises(ReviewError, match="pm topics apply"):
        ReviewClient(config, read_timeout=5).pending()


def test_a_foreign_tool_following_docs_approvals_md_produces_a_valid_decision(review: Config) -> None:
    """Only fastavro, hmac and a plain librdkafka producer: what docs/approvals.md tells other tools to do."""
    req = request(1)
    publish(review, req)
    key_id, secret, _ = ensure_local_key(review)
    decided_at = datetime.now(UTC).replace(microsecond=123000)
    signed = {
        "approval_id": req.payload.approval_id,
        "correlation_id": req.correlation_id,
        "decided_at": decided_at.strftime("%Y-%m-%dT%H:%M:%S.123Z"),
        "decision": "reject",
        "draft_hash": req.payload.draft_hash,
        "edited_body": None,
        "key_id": key_id,
        "policy_version": req.payload.policy_version,
        "reason": "ünsure about the carrier",
        "reviewer": "bob",
    }
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signature = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "ApprovalDecided.avsc").read_text())
    header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    body = io.BytesIO()
    schemaless_writer(
        body,
        parse_schema(schema),
        {
            "event_id": str(uuid.uuid4()),
            "correlation_id": req.correlation_id,
            "causation_id": None,
            "type": "ApprovalDecided",
            "occurred_at": decided_at,
            "schema_version": 1,
            "payload": {
                **{k: v for k, v in signed.items() if k != "correlation_id"},
                "decided_at": decided_at,
                "signature": signature,
            },
        },
    )
    # Deliberately not pm.kafka: this is the other tool's client, with only what the doc requires.
    producer = Producer(
        {"bootstrap.servers": review.bootstrap, "partitioner": "murmur2_random", "acks": "all"}
    )
    producer.produce(
        review.topic("approvals"), key=req.correlation_id.encode(), value=header + body.getvalue()
    )
    assert producer.flush(10) == 0

    [(key, partition, decided)] = decisions_on_topic(review, 1)
    assert partition == java_murmur2_partition(key, 6)
    assert decided.payload.reason == "ünsure about the carrier"
    assert ApprovalVerifier(review)(decided) is None
    assert ReviewClient(review).show(req.payload.approval_id).status == "decided"


def test_decisions_the_pm_would_refuse_do_not_hide_a_request(
    review: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PM_REVIEWERS", ",".join(review.reviewers))  # the CLI reads its own configuration
    req = request(1)
    publish(review, req)
    key_id, secret, _ = ensure_local_key(review)
    p = req.payload

    def signed(reviewer: str, draft_hash: str, secret: str) -> ApprovalDecided:
        return build_decision(
            correlation_id=req.correlation_id,
            approval_id=p.approval_id,
            decision="approve",
            reviewer=reviewer,
            draft_hash=draft_hash,
            policy_version=p.policy_version,
            key_id=key_id,
            secret=secret,
        )

    forged = signed("alice", p.draft_hash, "guess")
    stale = signed("alice", "0" * 64, secret)
    outsider = signed("mallory", p.draft_hash, secret)
    client = ReviewClient(review)
    for event in (forged, stale, outsider):
        client.publish(event)

    [pending] = client.pending()
    assert pending.approval_id == p.approval_id and pending.decisions == ()
    whys = {d.event_id: why for d, why in pending.ignored}
    assert whys[forged.event_id].startswith("bad signature")
    assert whys[stale.event_id] == "proposal hash mismatch"
    assert whys[outsider.event_id].startswith("reviewer not allowed")
    code, out, _ = cli(review, "approvals", "show", p.approval_id, capsys=capsys)
    assert code == 0 and out.count("ignored decision:") == 3
    assert client.approve(p.approval_id, "bob").event.payload.reviewer == "bob"
    assert client.show(p.approval_id).status == "decided"
