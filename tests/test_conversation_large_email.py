"""A 700 KiB e-mail goes through the PM like any other (issue 14, item 1), on a real broker.

A journal entry embeds its input once and each command encoded; the commands carry a bounded
excerpt of the body (with `body_truncated` and `body_bytes`), never the body itself, so the
entry and every command stay under the record limit (`Config.max_record_bytes`, 1,000,000 by
default, Kafka's) and the process ends normally instead of failing.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from test_runtime_customer_email import CUSTOMER, KEY_ID, REVIEWER, SECRET, Steps
from test_runtime_support import PmThread, wait_until

from customer_email.conversation import BODY_EXCERPT_BYTES
from customer_email.events import ClassifyEmail, DraftReply, EmailReceived, EmailReceivedPayload
from pm.approvals import ApprovalVerifier
from pm.codec import decode, encode
from pm.config import Config
from pm.journal import iter_journal
from pm.kafka import make_producer

BODY_BYTES = 700 * 1024


def test_a_700_kib_email_ends_normally_and_every_record_stays_under_the_limit(topics: Config) -> None:
    config = topics
    assert config.max_record_bytes == 1_000_000  # the default: Apache Kafka's
    cid = f"<big-{uuid.uuid4().hex[:8]}@mail.example>"
    now = datetime.now(UTC)
    body = "Hello, my order A1001 has not arrived. " + ("Here is the whole story again, in detail. " * 20_000)
    body = body.encode()[:BODY_BYTES].decode("utf-8", "ignore")
    event = EmailReceived(
        event_id=str(uuid.uuid4()),
        correlation_id=cid,
        occurred_at=now,
        payload=EmailReceivedPayload(
            message_id=cid,
            sender=f"Jane Doe <{CUSTOMER}>",
            recipient="support@shop.example",
            subject="Where is my parcel?",
            body=body,
            received_at=now,
            order_id="A1001",
        ),
    )
    raw = encode(event)
    assert BODY_BYTES <= len(raw) < config.max_record_bytes  # fits as an input, with room for the entry
    steps = Steps(config, {cid: "delivery_status"})
    verifier = ApprovalVerifier(config, keys={KEY_ID: SECRET}, reviewers=(REVIEWER,))
    steps.start()
    started = time.monotonic()
    try:
        with PmThread(config, definitions=None, verifier=verifier) as pm:
            producer = make_producer(config, "upstream")
            producer.produce(config.topic(event.topic), key=cid, value=raw)
            assert producer.flush(10) == 0

            def status() -> str | None:
                assert pm.manager is not None
                for store in pm.manager.stores.values():
                    record = store.get_record(cid)
                    if record is not None:
                        return str(record["status"])
                return None

            wait_until(lambda: status() in ("sent", "failed", "escalated"), timeout=60)
            assert status() == "sent"
    finally:
        steps.stop.set()
        steps.join(10)
    assert steps.error is None
    print(f"700 KiB e-mail sent in {time.monotonic() - started:.1f}s")
    records = [r for r in iter_journal(config, idle_timeout=5) if r.entry.correlation_id == cid]
    assert [r.entry.payload.outcome for r in records] == ["applied"] * len(records)
    assert records[-1].entry.payload.status == "sent"
    for record in records:
        entry_bytes = len(encode(record.entry))
        assert entry_bytes < config.max_record_bytes, (record.event.type, entry_bytes)
        for command in record.entry.payload.commands:
            assert len(command) < 64 * 1024, (record.event.type, len(command))  # an excerpt, never the body
    first = records[0].entry.payload
    assert len(encode(records[0].entry)) < len(raw) + 64 * 1024  # the body is in the entry once
    classify = decode(first.commands[0])
    assert isinstance(classify, ClassifyEmail)
    assert classify.payload.body_truncated and classify.payload.body_bytes == len(body.encode())
    assert len(classify.payload.email.body.encode()) <= BODY_EXCERPT_BYTES
    assert body.startswith(classify.payload.email.body)
    drafts = [c for c in steps.seen if isinstance(c, DraftReply)]
    assert drafts and all(d.payload.body_truncated and len(d.payload.email.body) <= BODY_EXCERPT_BYTES for d in drafts)
