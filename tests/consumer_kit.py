"""Helpers for the step-consumer tests: build commands, produce them, run a consumer, read results."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from customer_email.events import (
    Email,
    FetchOrder,
    FetchOrderPayload,
    FetchRefundPolicy,
    FetchRefundPolicyPayload,
    SendEmail,
    SendEmailPayload,
)
from pm.codec import decode, encode
from pm.config import Config
from pm.events import Event, command_id, derive_id
from pm.kafka import make_consumer, make_producer
from pm.steps.consumer import StepConsumer

__all__ = [
    "fetch_order",
    "fetch_policy",
    "send_email",
    "produce",
    "produce_raw",
    "Reader",
    "running",
    "EMAIL",
]

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
EMAIL = Email(
    message_id="<m1@mail.example>",
    sender="jane@example.com",
    recipient="support@example.com",
    subject="Where is my order?",
    body="My order hasn't arrived.",
    received_at=NOW,
    order_id="A-1001",
)


def _ids(step: str, correlation_id: str | None, attempt: int) -> tuple[str, str, str]:
    corr = correlation_id or f"c-{uuid.uuid4().hex[:8]}"
    cid = command_id(corr, step, attempt)
    return corr, cid, derive_id(cid, "event")


def fetch_order(order_id: str, correlation_id: str | None = None, attempt: int = 1) -> FetchOrder:
    corr, cid, eid = _ids("fetch-order", correlation_id, attempt)
    return FetchOrder(
        event_id=eid,
        correlation_id=corr,
        occurred_at=NOW,
        payload=FetchOrderPayload(command_id=cid, attempt=attempt, order_id=order_id),
    )


def fetch_policy(
    category: str, correlation_id: str | None = None, at: datetime = NOW, attempt: int = 1
) -> FetchRefundPolicy:
    corr, cid, eid = _ids("fetch-refund-policy", correlation_id, attempt)
    return FetchRefundPolicy(
        event_id=eid,
        correlation_id=corr,
        occurred_at=at,
        payload=FetchRefundPolicyPayload(command_id=cid, attempt=attempt, category=category),
    )


def send_email(
    to: str = "jane@example.com", correlation_id: str | None = None, attempt: int = 1
) -> SendEmail:
    corr, cid, eid = _ids("send-email", correlation_id, attempt)
    return SendEmail(
        event_id=eid,
        correlation_id=corr,
        occurred_at=NOW,
        payload=SendEmailPayload(
            command_id=cid,
            attempt=attempt,
            to=to,
            subject="Re: Where is my order?",
            body="We refunded your shipping.",
            in_reply_to="m1@mail.example",
        ),
    )


def produce(config: Config, *events: Event, headers: list[tuple[str, bytes]] | None = None) -> None:
    producer = make_producer(config, "test")
    for event in events:
        producer.produce(
            config.topic(event.topic), value=encode(event), key=event.correlation_id.encode(), headers=headers
        )
    assert producer.flush(10) == 0


def produce_raw(config: Config, topic: str, key: bytes, value: bytes) -> None:
    producer = make_producer(config, "test")
    producer.produce(config.topic(topic), value=value, key=key)
    assert producer.flush(10) == 0


_OPEN_READERS: list[Reader] = []


def close_open_readers() -> None:
    """Close every Reader a test left open (conftest, after each test): an open consumer kept
    reconnecting to the session's broker after it stopped."""
    for reader in list(_OPEN_READERS):
        reader.close()


class Reader:
    """Reads a topic from the start in its own group; `take(n)` returns n decoded events (raw kept too)."""

    def __init__(self, config: Config, topic: str = "step.results") -> None:
        self.consumer = make_consumer(config, "test-reader", f"reader-{uuid.uuid4().hex[:8]}")
        self.consumer.subscribe([config.topic(topic)])
        self.raw: list[Any] = []
        _OPEN_READERS.append(self)

    def take(self, n: int, timeout: float = 20.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        got: list[Any] = []
        while len(got) < n and time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            got.append(msg)
        self.raw.extend(got)
        assert len(got) == n, f"expected {n} records, got {len(got)}"
        return [decode(m.value()) for m in got]

    def close(self) -> None:
        if self in _OPEN_READERS:
            _OPEN_READERS.remove(self)
            self.consumer.close()


@contextmanager
def running(consumer: StepConsumer) -> Iterator[StepConsumer]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "consumer did not stop"
    if errors:
        raise errors[0]


class GatedSync:
    """A step ledger's database (`ledger._db`) whose WAL sync waits for the test's gate, counting syncs."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.syncs = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def flush_wal(self, sync: bool) -> None:
        self.syncs += 1
        self.entered.set()
        assert self.gate.wait(10)
        self.db.flush_wal(sync)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)
