"""The wire codec: every event type round-trips, old schema versions still read, garbage is refused."""

from __future__ import annotations

import io
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastavro import schemaless_reader

from customer_email.app import APP  # also registers the bundled app's upcasters with the codec
from customer_email.approval_request import approval_payload
from customer_email.events import (
    ClassifyEmail,
    Draft,
    DraftReply,
    Email,
    EmailClassified,
    EmailReceived,
    EmailSent,
    FetchOrder,
    FetchRefundPolicy,
    Order,
    OrderFetched,
    RefundPolicy,
    RefundPolicyFetched,
    ReplyDrafted,
    SendEmail,
    Step,
)
from pm import codec
from pm.codec import CodecError, decode, encode
from pm.config import Config
from pm.events import (
    ApprovalDecided,
    ApprovalReminder,
    ApprovalRequested,
    DlqRecord,
    Event,
    JournalEntry,
    LlmCall,
    OperatorCommand,
    StepFailed,
    TimerCancelled,
    TimerFired,
    TimerScheduled,
    command_id,
    derive_id,
)
from pm.kafka import make_consumer, make_producer
from pm.schemas import core_event_types

T0 = datetime(2026, 11, 20, 9, 30, 15, 123000, tzinfo=UTC)
CID = "<CAF1x9q@mail.example.com>"


def _envelope(kind: str, n: int, causation: str | None = "cause-1") -> dict[str, Any]:
    return {
        "event_id": derive_id(CID, kind, n),
        "correlation_id": CID,
        "causation_id": causation,
        "occurred_at": T0 + timedelta(seconds=n),
    }


EMAIL = Email(
    message_id=CID,
    thread_id="thread-42",
    sender="jane.doe@example.org",
    recipient="support@shop.example.com",
    subject="Where is my order?",
    body="My order hasn't arrived and I need it for Monday. Can you refund shipping? Order A-1001.",
    received_at=T0,
    order_id="A-1001",
    labels=["vip", "de"],
)
ORDER = Order(
    order_id="A-1001",
    customer_email="jane.doe@example.org",
    customer_name="Jane Doe",
    carrier="DHL",
    status="shipped",
    shipped_at=T0 - timedelta(days=3),
    expected_delivery=T0 + timedelta(days=1),
    total_cents=12_999,
    shipping_cost_cents=599,
    currency="EUR",
)
POLICY = RefundPolicy(
    category="refund_request",
    version="2026-11-01",
    refund_shipping=True,
    max_refund_cents=5_000,
    max_refund_ratio=0.5,
    allowed_promises=["refund_shipping", "reship"],
    summary="Shipping may be refunded when delivery is late.",
)
DRAFT = Draft(
    subject="Re: Where is my order?",
    body="Dear Jane, your order A-1001 ships with DHL; we refunded the shipping cost of 5.99 EUR.",
    order_id="A-1001",
    refund_cents=599,
    promises=["refund_shipping"],
)
LLM = LlmCall(
    provider="openai-compatible",
    model="gpt-4o-mini",
    prompt=json.dumps([{"role": "user", "content": "classify"}]),
    raw_output='{"intent": "refund_request"}',
    prompt_tokens=312,
    completion_tokens=41,
    latency_ms=850,
)
CMD = command_id(CID, "classify", 1)


# What an ApprovalRequested carried before approvals were generic (schema versions 1 and 2).
LEGACY_APPROVAL = {
    "approval_id": "ap-1",
    "draft_hash": "ab" * 32,
    "policy_version": "2026-11-01",
    "email": EMAIL,
    "intent": "refund_request",
    "risk": "high",
    "order": ORDER,
    "draft": DRAFT,
    "guard_verdict": ["a finding"],
    "reasons": ["refund intent", "high risk"],
    "requested_at": T0,
    "deadline": T0 + timedelta(hours=24),
}
LEGACY_APPROVAL_FIELDS: dict[str, Any] = {
    **{k: v for k, v in LEGACY_APPROVAL.items() if k not in ("draft_hash", "guard_verdict")},
    "findings": ["a finding"],
}


def sample_events() -> list[Event]:
    """One realistic event of every registered type, optional fields filled."""
    email = EMAIL.model_dump()
    timer = {"timer_id": derive_id(CID, "timer", 1), "name": "step-timeout:classify", "due_at": T0}
    inner = encode(EmailReceived(**_envelope("in", 0, None), payload=email))
    return [
        EmailReceived(**_envelope("email", 0, None), payload=email),
        ClassifyEmail(**_envelope("c", 1), payload={"command_id": CMD, "attempt": 1, "email": EMAIL}),
        FetchOrder(**_envelope("fo", 2), payload={"command_id": "c2", "attempt": 2, "order_id": "A-1001"}),
        FetchRefundPolicy(
            **_envelope("fp", 3), payload={"command_id": "c3", "attempt": 1, "category": "refund"}
        ),
        DraftReply(
            **_envelope("dr", 4),
            payload={
                "command_id": "c4",
                "attempt": 2,
                "email": EMAIL,
                "intent": "refund_request",
                "order": ORDER,
                "policy": POLICY,
                "violations": ["refund above policy cap"],
                "previous_draft": DRAFT,
            },
        ),
        SendEmail(
            **_envelope("se", 5),
            payload={
                "command_id": "c5",
                "attempt": 1,
                "to": "jane.doe@example.org",
                "subject": DRAFT.subject,
                "body": DRAFT.body,
                "in_reply_to": CID,
            },
        ),
        EmailClassified(
            **_envelope("ec", 6),
            payload={
                "command_id": CMD,
                "attempt": 1,
                "intent": "refund_request",
                "risk": "high",
                "order_id": "A-1001",
                "confidence": 0.93,
                "llm": LLM,
            },
        ),
        OrderFetched(
            **_envelope("of", 7),
            payload={"command_id": "c2", "attempt": 2, "order_id": "A-1001", "found": True, "order": ORDER},
        ),
        RefundPolicyFetched(
            **_envelope("pf", 8), payload={"command_id": "c3", "attempt": 1, "policy": POLICY}
        ),
        ReplyDrafted(
            **_envelope("rd", 9), payload={"command_id": "c4", "attempt": 2, "draft": DRAFT, "llm": LLM}
        ),
        EmailSent(
            **_envelope("es", 10),
            payload={
                "command_id": "c5",
                "attempt": 1,
                "to": "jane.doe@example.org",
                "message_id": "<c5@pm.local>",
                "smtp_response": "250 OK queued",
            },
        ),
        StepFailed(
            **_envelope("sf", 11),
            payload={
                "command_id": "c4",
                "attempt": 1,
                "step": "draft-reply",
                "retryable": False,
                "uncertain": True,
                "reason": "schema violation",
                "errors": ["body: too long", "refund_cents: above cap"],
                "llm": LLM,
            },
        ),
        ApprovalRequested(
            **_envelope("ar", 12),
            payload=approval_payload(**LEGACY_APPROVAL_FIELDS),
        ),
        ApprovalReminder(
            **_envelope("rm", 13),
            payload={
                "approval_id": "ap-1",
                "requested_at": T0,
                "deadline": T0 + timedelta(hours=24),
                "reminder": 2,
            },
        ),
        ApprovalDecided(
            **_envelope("ad", 14),
            payload={
                "approval_id": "ap-1",
                "decision": "edit",
                "reviewer": "alice",
                "draft_hash": "ab" * 32,
                "policy_version": "2026-11-01",
                "reason": "tone",
                "edited_body": "Dear Jane, ...",
                "decided_at": T0 + timedelta(minutes=5),
                "key_id": "k1",
                "signature": "cd" * 32,
            },
        ),
        TimerScheduled(**_envelope("ts", 15), payload=timer),
        TimerCancelled(**_envelope("tc", 16), payload=timer),
        TimerFired(**_envelope("tf", 17), payload=timer),
        OperatorCommand(
            **_envelope("oc", 20),
            payload={"action": "release", "operator": "ops-émile", "note": "ACL of cmd.send-email fixed"},
        ),
        JournalEntry(
            **_envelope("je", 18),
            payload={
                "process": "customer-email",
                "process_version": 3,
                "input_topic": "email.received",
                "input_partition": 4,
                "input_offset": 2**40,
                "event": inner,
                "outcome": "rejected",
                "reason": "duplicate",
                "status": "running",
                "commands": [inner, b"\x00\xff"],
                "published": [inner],
                "timers_scheduled": [timer],
                "timers_cancelled": ["t-0"],
            },
        ),
        DlqRecord(
            **_envelope("dl", 19),
            payload={
                "source_topic": "step.results",
                "source_partition": 1,
                "source_offset": 77,
                "key": CID.encode(),
                "value": b"\x00garbage\xff",
                "reason": "unknown schema fingerprint 0102030405060708",
                "error_type": "CodecError",
                "failed_by": "pm-0",
            },
        ),
    ]


def minimal_events() -> list[Event]:
    """Events with every optional field left at its default (nulls, empty lists)."""
    email = {
        "message_id": "m1",
        "sender": "a@b.c",
        "recipient": "s@b.c",
        "subject": "",
        "body": "",
        "received_at": T0,
    }
    return [
        EmailReceived(event_id="e1", correlation_id="m1", occurred_at=T0, payload=email),
        OrderFetched(
            event_id="e2",
            correlation_id="m1",
            occurred_at=T0,
            payload={"command_id": "c", "attempt": 1, "order_id": "X", "found": False},
        ),
        DlqRecord(
            event_id="e3",
            correlation_id="m1",
            occurred_at=T0,
            payload={
                "source_topic": "t",
                "source_partition": 0,
                "source_offset": 0,
                "key": None,
                "value": None,
                "reason": "r",
                "error_type": "E",
                "failed_by": "x",
            },
        ),
    ]


def test_samples_cover_every_event_type() -> None:
    """Every core type and every type of the bundled app (other apps' tests register theirs too)."""
    expected = {cls.TYPE for cls in (*core_event_types(), *APP.event_types)}
    assert {type(e).TYPE for e in sample_events()} == expected


@pytest.mark.parametrize(
    "event", sample_events() + minimal_events(), ids=lambda e: f"{e.type}-{e.event_id[:6]}"
)
def test_round_trip(event: Event) -> None:
    data = encode(event)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec.schema_for(event.type).fingerprint
    back = decode(data)
    assert type(back) is type(event)
    assert back == event
    assert codec.type_of(data) == event.type
    assert encode(back) == data  # deterministic bytes


def test_fingerprint_matches_the_avro_spec() -> None:
    # Reference values from the Avro spec's CRC-64-AVRO (Java SchemaNormalization.parsingFingerprint64),
    # little-endian as in the single-object header.
    assert codec.fingerprint('"int"') == (0x7275D51A3F395C8F).to_bytes(8, "little")
    assert codec.fingerprint('"string"') == (0x8F014872634503C7).to_bytes(8, "little")


def test_single_object_header_is_readable_without_pm() -> None:
    """Another language needs only the .avsc: strip 10 bytes, read the body with the schema."""
    event = sample_events()[0]
    data = encode(event)
    info = codec.schema_for(event.type)
    record = schemaless_reader(io.BytesIO(data[codec.HEADER_SIZE :]), info.parsed, None)
    assert record["payload"]["message_id"] == CID
    assert record["occurred_at"] == event.occurred_at
    assert record["schema_version"] == 2


# ---------------------------------------------------------------- evolution


def _old_versions() -> list[codec.SchemaInfo]:
    reg = codec.registry()
    return [i for i in reg.all() if i is not reg.latest.get(i.type_name)]


def test_an_older_version_is_kept() -> None:
    """The evolution example: EmailReceived v1 (no `labels`) lives under schemas/v1/."""
    old = {(i.type_name, i.version) for i in _old_versions()}
    assert ("EmailReceived", 1) in old
    assert codec.schema_for("EmailReceived").version == 2


@pytest.mark.parametrize("old", _old_versions(), ids=lambda i: f"{i.type_name}-v{i.version}")
def test_latest_schema_reads_every_older_version(old: codec.SchemaInfo) -> None:
    """Data written with an old schema (plain fastavro + framing) decodes into today's model."""
    sample = next(e for e in sample_events() if e.type == old.type_name)
    record = sample.model_dump()
    record["schema_version"] = old.version
    if codec.upcaster_for(old.type_name, old.version) is not None:
        pytest.skip("read through an upcaster (its own test below)")
    data = codec.encode_record(old, record)  # fastavro drops the fields v1 did not have
    assert data[2:10] == old.fingerprint != codec.schema_for(old.type_name).fingerprint
    as_written = schemaless_reader(io.BytesIO(data[codec.HEADER_SIZE :]), old.parsed, None)
    decoded = decode(data)
    # Avro defaults of the new fields agree with the pydantic defaults.
    assert decoded == type(sample).model_validate(as_written)
    assert decoded.schema_version == type(sample).SCHEMA_VERSION


@pytest.mark.parametrize("version", [1, 2])
def test_approval_requests_of_the_e_mail_era_read_as_todays_proposal(version: int) -> None:
    """Versions 1-2 carried the e-mail, order and draft; the bundled app upcasts them (same as built today)."""
    old = next(i for i in _old_versions() if i.type_name == "ApprovalRequested" and i.version == version)
    legacy = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in LEGACY_APPROVAL.items()}
    if version == 1:
        legacy["email"] = {k: v for k, v in legacy["email"].items() if k != "labels"}
    record = {**sample_envelope("ApprovalRequested", version), "payload": legacy}
    event = decode(codec.encode_record(old, record))
    assert isinstance(event, ApprovalRequested)
    fields = dict(LEGACY_APPROVAL_FIELDS)
    if version == 1:  # v1 e-mails had no labels: they read with the default
        fields["email"] = EMAIL.model_copy(update={"labels": []})
    assert event.payload == approval_payload(**fields)
    assert json.loads(event.payload.proposal) == DRAFT.model_dump(mode="json")


def sample_envelope(type_name: str, version: int) -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "correlation_id": "m-1",
        "causation_id": None,
        "type": type_name,
        "occurred_at": T0,
        "schema_version": version,
    }


def test_email_received_v1_record_reads_with_default_labels() -> None:
    v1 = next(i for i in _old_versions() if i.type_name == "EmailReceived" and i.version == 1)
    assert "labels" not in json.dumps(v1.schema)
    record = {
        "event_id": "e-1",
        "correlation_id": "m-1",
        "causation_id": None,
        "type": "EmailReceived",
        "occurred_at": T0,
        "schema_version": 1,
        "payload": {
            "message_id": "m-1",
            "thread_id": None,
            "sender": "bob@example.org",
            "recipient": "support@example.com",
            "subject": "hi",
            "body": "where is order B-7?",
            "received_at": T0,
            "order_id": "B-7",
        },
    }
    event = decode(codec.encode_record(v1, record))
    assert isinstance(event, EmailReceived)
    assert event.payload.labels == []
    assert event.payload.order_id == "B-7"
    assert event.payload.received_at == T0


# ---------------------------------------------------------------- garbage -> CodecError


def test_garbage_is_refused() -> None:
    valid = encode(sample_events()[12])
    cases: dict[str, Any] = {
        "empty": b"",
        "json": json.dumps({"type": "EmailReceived", "payload": {}}).encode(),
        "marker only": b"\xc3\x01",
        "bad marker": b"\xc3\x02" + valid[2:],
        "unknown fingerprint": valid[:2] + bytes(8) + valid[10:],
        "trailing bytes": valid + b"\x00",
        "not bytes": "text",
    }
    for name, data in cases.items():
        with pytest.raises(CodecError):
            decode(data)
        assert name


def test_unknown_fingerprint_message_names_it() -> None:
    data = b"\xc3\x01" + bytes.fromhex("0102030405060708") + b"\x00"
    with pytest.raises(CodecError, match="unknown schema fingerprint 0102030405060708"):
        decode(data)


def test_every_truncation_is_refused() -> None:
    for event in sample_events():
        data = encode(event)
        for cut in range(len(data)):
            with pytest.raises(CodecError):
                decode(data[:cut])


def test_random_and_corrupted_bytes_raise_only_codec_error() -> None:
    rng = random.Random(20261120)
    events = sample_events()
    refused = 0
    for _ in range(3000):
        data = bytearray(encode(rng.choice(events)))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(codec.HEADER_SIZE, len(data))] = rng.randrange(256)
        try:
            decode(bytes(data))  # a flip inside a string can still be a valid event
        except CodecError:
            refused += 1
    for _ in range(500):
        with pytest.raises(CodecError):
            decode(rng.randbytes(rng.randint(0, 200)))
    assert refused > 300


def test_schema_valid_but_model_invalid_is_refused() -> None:
    """The Avro body is fine, pydantic is not (sender too short, risk not allowed, type mismatch)."""
    sample = sample_events()
    bad = sample[0].model_dump()
    bad["payload"]["sender"] = "x"
    with pytest.raises(CodecError, match="invalid EmailReceived"):
        decode(codec.encode_record(codec.schema_for("EmailReceived"), bad))
    bad = sample[6].model_dump()
    bad["payload"]["risk"] = "extreme"
    with pytest.raises(CodecError, match="risk"):
        decode(codec.encode_record(codec.schema_for("EmailClassified"), bad))
    bad = sample[0].model_dump()
    bad["type"] = "OrderFetched"
    with pytest.raises(CodecError):
        decode(codec.encode_record(codec.schema_for("EmailReceived"), bad))


def test_encoding_an_event_without_schema_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="no schema"):
        codec.schema_for("NoSuchEvent")


# ---------------------------------------------------------------- on the broker


def test_round_trip_through_the_broker(topics: Config) -> None:
    events = sample_events()
    topic = topics.topic("pm.journal")
    producer = make_producer(topics, "test-codec")
    for event in events:
        producer.produce(topic, key=event.correlation_id.encode(), value=encode(event))
    assert producer.flush(10) == 0
    consumer = make_consumer(topics, "test-codec", f"{topics.topic_prefix}codec")
    consumer.subscribe([topic])  # a real group member, as the PM and consumers read
    received: list[Event] = []
    deadline = time.monotonic() + 20
    try:
        while len(received) < len(events) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            assert msg.key() == CID.encode()
            received.append(decode(msg.value()))
    finally:
        consumer.close()
    assert received == events  # one key, one partition: order kept


def test_derive_id_is_uuid5_of_its_parts() -> None:
    # IDs in existing journals were made with uuid.uuid5: the fast path must give the same strings.
    namespace = uuid.UUID("6f1c2a4e-8d0b-5b7e-9a51-3c2f0e6d4b19")
    for parts in [(CID, "timer", "timeout:classify", 3), ("x",), ("<é@ü>", Step.CLASSIFY, 0), ("a/b", "")]:
        assert derive_id(*parts) == str(uuid.uuid5(namespace, "/".join(str(p) for p in parts)))
