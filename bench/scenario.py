"""Scripted e-mail processes for the benchmarks: real events, real `decide`, real step handlers.

`Scenario` builds upstream e-mails and answers commands the way the step consumers
would (the offline classify/draft handlers, the policy file, the sample orders, a
fake SMTP acknowledgement), without Kafka. `JournalWriter` folds whole processes
through `pm.journal` (evaluate/advance/build_entry) and produces the entries straight
to `pm.journal`, so `rebuild` and `memory` get a journal the PM could have written.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from consumers import classify, draft_reply, fetch_refund_policy
from consumers.llm import OfflineProvider
from consumers.order_service import load_orders
from customer_email import CUSTOMER_EMAIL
from customer_email.events import (
    EmailReceived,
    EmailSent,
    EmailSentPayload,
    FetchOrder,
    OrderFetched,
    OrderFetchedPayload,
    SendEmail,
)
from customer_email.publisher import email_event
from pm.codec import encode
from pm.config import Config
from pm.events import Event
from pm.journal import JOURNAL_TOPIC, advance, build_entry, evaluate
from pm.kafka import make_producer
from pm.partitioner import partition_for
from pm.process import ProcessDefinition
from pm.steps.handler import result_event
from pm.topics import load_layout

__all__ = ["KINDS", "Scenario", "JournalWriter", "produce_all"]

# kind -> (subject, body): "status" is answered without a human, "refund" needs an approval,
# "other" is escalated right after classification (the shortest way to a finished process).
KINDS: dict[str, tuple[str, str]] = {
    "status": ("Where is my order A-1001?", "Hello, where is my order A-1001? Any tracking update?"),
    "refund": (
        "Order A-1001 hasn't arrived",
        "Hi, my order A-1001 hasn't arrived and I need it for Monday. Can you refund shipping?",
    ),
    "other": ("Hello", "Just wanted to say hi to the team."),
}
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


class Scenario:
    """E-mails and step results for benchmark processes (the sample order A-1001 of jane@example.com)."""

    def __init__(self, config: Config, run_id: str = "b") -> None:
        self.run_id = run_id
        # Always the offline rules: a benchmark never calls a model.
        self._classify = classify.build_handler(config, provider=OfflineProvider())
        self._draft = draft_reply.build_handler(config, provider=OfflineProvider())
        self._policy = fetch_refund_policy.build_handler(config)
        self._orders = load_orders()

    def correlation_id(self, i: int) -> str:
        return f"<bench-{self.run_id}-{i}@mail.example.com>"

    def email(self, i: int, kind: str = "status", *, now: datetime | None = None) -> EmailReceived:
        subject, body = KINDS[kind]
        return email_event(
            {
                "message_id": self.correlation_id(i),
                "sender": "jane@example.com",
                "recipient": "support@example.com",
                "subject": subject,
                "body": body,
                "received_at": now or datetime.now(UTC),
                "order_id": "A-1001",
            }
        )

    def answer(self, command: Event, now: datetime) -> Event:
        """The result event the step consumer would publish for `command`."""
        if isinstance(command, FetchOrder):
            order = self._orders.get(command.payload.order_id or "")
            payload = OrderFetchedPayload(
                command_id=command.payload.command_id,
                attempt=command.payload.attempt,
                order_id=command.payload.order_id,
                found=order is not None,
                order=order,
            )
            return result_event(command, OrderFetched, payload, now)
        if isinstance(command, SendEmail):
            sent = EmailSentPayload(
                command_id=command.payload.command_id,
                attempt=command.payload.attempt,
                to=command.payload.to,
                message_id=f"<{command.payload.command_id}@bench>",
                smtp_response="250 OK",
            )
            return result_event(command, EmailSent, sent, now)
        step = command.topic.removeprefix("cmd.")
        if step == "classify":
            return self._classify.handle(command, now)
        if step == "draft-reply":
            return self._draft.handle(command, now)
        return self._policy.handle(command, now)

    def first_command(self, event: EmailReceived) -> Event:
        """The command the PM issues for a new e-mail (decide is pure: same IDs as the PM's)."""
        outcome = evaluate(CUSTOMER_EMAIL, CUSTOMER_EMAIL.initial_state(event), event, now=event.occurred_at)
        assert outcome.decision is not None and outcome.decision.commands
        return outcome.decision.commands[0]


class JournalWriter:
    """Runs whole processes through decide and produces their journal entries (no PM, no consumers)."""

    def __init__(self, config: Config, scenario: Scenario, *, snapshots: bool = True) -> None:
        self.config = config
        self.scenario = scenario
        self.snapshots = snapshots  # False: entries as before schema version 3 (no `record`)
        self.partitions = load_layout().spec(JOURNAL_TOPIC).partitions
        self._offsets: dict[tuple[str, int], int] = {}

    def entries(self, i: int, kind: str) -> Iterator[tuple[int, bytes, str]]:
        """(partition, encoded JournalEntry, correlation ID) of process `i`, in journal order, to its end."""
        definition: ProcessDefinition[Any] = CUSTOMER_EMAIL
        now = EPOCH + timedelta(seconds=i)
        first = self.scenario.email(i, kind, now=now)
        cid = first.correlation_id
        partition = partition_for(cid.encode("utf-8"), self.partitions)
        inputs: deque[Event] = deque([first])
        record = None
        state = definition.initial_state(first)
        while inputs:
            event = inputs.popleft()
            topic = event.topic
            key = (topic, partition)
            offset = self._offsets.get(key, 0)
            self._offsets[key] = offset + 1
            outcome = evaluate(definition, state, event, now=event.occurred_at)  # decided as it happens
            record = advance(definition, record, state, event, outcome, offset)
            state = record.state
            entry = build_entry(
                definition,
                event,
                encode(event),
                topic=topic,
                partition=partition,
                offset=offset,
                outcome=outcome,
                status=record.status,
                decided_at=event.occurred_at,
                record=record.snapshot() if self.snapshots else None,
            )
            yield partition, encode(entry), cid
            if outcome.decision is not None:
                now += timedelta(milliseconds=50)
                for command in outcome.decision.commands:
                    inputs.append(self.scenario.answer(command, now))

    def write(self, processes: int, kind: str, *, max_entries: int | None = None) -> int:
        """Produce the journals of `processes` processes (stop at `max_entries`); returns entries written."""
        producer = make_producer(self.config, "bench-journal", **{"linger.ms": 50})
        topic = self.config.topic(JOURNAL_TOPIC)
        written = 0
        for i in range(processes):
            for partition, value, cid in self.entries(i, kind):
                _produce(producer, topic, partition, cid.encode(), value)
                written += 1
                if max_entries is not None and written >= max_entries:
                    break
            if max_entries is not None and written >= max_entries:
                break
        producer.flush(120)
        return written


def _produce(producer: Producer, topic: str, partition: int, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=partition)
            return
        except BufferError:
            producer.poll(0.05)


def produce_all(config: Config, events: list[Event], *, timeout: float = 120.0) -> float:
    """Produce events to their topics (keyed by correlation ID); returns the seconds it took."""
    producer = make_producer(config, "bench-load", **{"linger.ms": 20})
    started = time.perf_counter()
    for n, event in enumerate(events):
        while True:
            try:
                producer.produce(
                    config.topic(event.topic), key=event.correlation_id.encode(), value=encode(event)
                )
                break
            except BufferError:
                producer.poll(0.05)
        if n % 5000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining:
        raise RuntimeError(f"{remaining} records not delivered")
    return time.perf_counter() - started
