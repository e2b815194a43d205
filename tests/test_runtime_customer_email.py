"""The real customer-service e-mail process on the runtime: the test plays every step consumer and the reviewer."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from test_runtime_support import PmThread, wait_until

from customer_email.events import (
    ClassifyEmail,
    Draft,
    DraftReply,
    EmailClassified,
    EmailReceived,
    EmailReceivedPayload,
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
from customer_email.rules import STEP_TIMEOUTS
from pm.approvals import ApprovalVerifier, build_decision
from pm.codec import decode, encode
from pm.config import Config
from pm.events import ApprovalRequested, Event, LlmCall, derive_id
from pm.journal import iter_journal
from pm.kafka import make_consumer, make_producer

LLM = LlmCall(provider="offline", model="rules", prompt="[]", raw_output="{}")
CUSTOMER = "jane@example.com"
KEY_ID, SECRET, REVIEWER = "k1", "s3cret-for-tests", "alice"
POLICIES = {
    "delivery_status": RefundPolicy(
        category="delivery_status",
        version="delivery-v1",
        refund_shipping=False,
        max_refund_cents=0,
        max_refund_ratio=0.0,
        allowed_promises=["investigate"],
        summary="Tell the customer where the parcel is.",
    ),
    "refund_request": RefundPolicy(
        category="refund_request",
        version="refund-v3",
        refund_shipping=True,
        max_refund_cents=5000,
        max_refund_ratio=0.5,
        allowed_promises=["refund_shipping", "refund", "reship"],
        summary="Refund up to half the order, shipping included.",
    ),
}


def order(order_id: str) -> Order:
    return Order(
        order_id=order_id,
        customer_email=CUSTOMER,
        customer_name="Jane Doe",
        carrier="UPS",
        status="delivered",
        total_cents=12000,
        shipping_cost_cents=900,
    )


def draft_for(command: DraftReply) -> Draft:
    oid = command.payload.order.order_id if command.payload.order else "?"
    if command.payload.intent == "refund_request":
        return Draft(
            subject=f"Your refund for {oid}",
            body=f"Hello Jane, we are refunding the 9.00 USD shipping cost of order {oid}. Kind regards.",
            order_id=oid,
            refund_cents=900,
            promises=["refund_shipping"],
        )
    body = f"Hello Jane, your order {oid} was delivered by UPS yesterday. Kind regards, the support team."
    return Draft(subject=f"Your order {oid}", body=body, order_id=oid)


class Steps(threading.Thread):
    """Every step consumer and the reviewer, scripted: answer each command with its result."""

    def __init__(self, config: Config, intents: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.intents = intents  # correlation ID -> intent the classifier "finds"
        self.stop = threading.Event()
        self.seen: list[Event] = []
        self.error: BaseException | None = None

    def answer(self, command: Event) -> Event | None:
        cid = command.correlation_id
        base: dict[str, Any] = {"correlation_id": cid, "occurred_at": command.occurred_at}
        if isinstance(command, ApprovalRequested):
            p = command.payload
            return build_decision(
                correlation_id=cid,
                approval_id=p.approval_id,
                decision="approve",
                reviewer=REVIEWER,
                draft_hash=p.draft_hash,
                policy_version=p.policy_version,
                key_id=KEY_ID,
                secret=SECRET,
                event_id=derive_id(p.approval_id, "decided"),
            )
        payload: dict[str, Any] = {
            "command_id": command.payload.command_id,
            "attempt": command.payload.attempt,
        }
        base.update(event_id=derive_id(command.payload.command_id, "result"), causation_id=command.event_id)
        if isinstance(command, ClassifyEmail):
            return EmailClassified(
                **base,
                payload={
                    **payload,
                    "intent": self.intents[cid],
                    "risk": "low",
                    "order_id": "A1001",
                    "confidence": 0.9,
                    "llm": LLM,
                },
            )
        if isinstance(command, FetchOrder):
            oid = command.payload.order_id
            return OrderFetched(
                **base, payload={**payload, "order_id": oid, "found": True, "order": order(oid)}
            )
        if isinstance(command, FetchRefundPolicy):
            return RefundPolicyFetched(
                **base, payload={**payload, "policy": POLICIES[command.payload.category]}
            )
        if isinstance(command, DraftReply):
            return ReplyDrafted(**base, payload={**payload, "draft": draft_for(command), "llm": LLM})
        if isinstance(command, SendEmail):
            return EmailSent(
                **base,
                payload={
                    **payload,
                    "to": command.payload.to,
                    "message_id": f"<{command.payload.command_id}@shop>",
                    "smtp_response": "250 OK",
                },
            )
        return None

    def run(self) -> None:
        topics = [
            self.config.topic(f"cmd.{s}")
            for s in ("classify", "fetch-order", "fetch-refund-policy", "draft-reply", "send-email")
        ]
        consumer = make_consumer(self.config, "steps", f"{self.config.topic_prefix}steps")
        producer = make_producer(self.config, "steps")
        try:
            consumer.subscribe([*topics, self.config.topic("approvals.requested")])
            while not self.stop.is_set():
                for message in consumer.consume(100, 0.1):
                    if message.error() is not None:
                        continue
                    command = decode(message.value())
                    self.seen.append(command)
                    result = self.answer(command)
                    if result is not None:
                        producer.produce(
                            self.config.topic(result.topic), key=result.correlation_id, value=encode(result)
                        )
                producer.flush(10)
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()


def received(cid: str, subject: str, age: timedelta = timedelta(0)) -> EmailReceived:
    now = datetime.now(UTC) - age
    return EmailReceived(
        event_id=str(uuid.uuid4()),
        correlation_id=cid,
        occurred_at=now,
        payload=EmailReceivedPayload(
            message_id=cid,
            sender=f"Jane Doe <{CUSTOMER}>",
            recipient="support@shop.example",
            subject=subject,
            body="Hi, about my order A1001.",
            received_at=now,
            order_id="A1001",
        ),
    )


def test_customer_email_runs_through_every_step_and_an_approval(topics: Config) -> None:
    config = topics
    delivery, refund = "<delivery@mail.example>", "<refund@mail.example>"
    steps = Steps(config, {delivery: "delivery_status", refund: "refund_request"})
    verifier = ApprovalVerifier(config, keys={KEY_ID: SECRET}, reviewers=(REVIEWER,))
    steps.start()
    started = datetime.now(UTC) - timedelta(seconds=1)
    try:
        with PmThread(config, definitions=None, verifier=verifier) as pm:  # the deployed DEFINITIONS
            producer = make_producer(config, "upstream")
            for cid, subject in ((delivery, "Where is my parcel?"), (refund, "I want my shipping refunded")):
                # The delivery e-mail is an hour old, as if it waited in Kafka behind backpressure.
                event = received(cid, subject, age=timedelta(hours=1) if cid == delivery else timedelta(0))
                producer.produce(config.topic(event.topic), key=cid, value=encode(event))
            producer.flush(10)

            def done() -> bool:
                assert pm.manager is not None
                statuses = {}
                for store in pm.manager.stores.values():
                    for cid in (delivery, refund):
                        record = store.get_record(cid)
                        if record is not None:
                            statuses[cid] = record["status"]
                return statuses == {delivery: "sent", refund: "sent"}

            wait_until(done, timeout=30)
    finally:
        steps.stop.set()
        steps.join(10)
    assert steps.error is None
    timeline: dict[str, list[str]] = {}
    for record in iter_journal(config):
        p = record.entry.payload
        assert p.outcome == "applied", p.reason
        # Decided now, and its timers count from then: the hour the e-mail waited does not expire them.
        assert p.decided_at is not None and p.decided_at >= started
        if isinstance(record.event, EmailReceived):
            assert [t.due_at for t in p.timers_scheduled] == [p.decided_at + STEP_TIMEOUTS[Step.CLASSIFY]]
        timeline.setdefault(record.entry.correlation_id, []).append(record.event.type)
    fetches = {"OrderFetched", "RefundPolicyFetched"}
    for cid in (delivery, refund):
        types = timeline[cid]
        assert types[:2] == ["EmailReceived", "EmailClassified"] and set(types[2:4]) == fetches
        assert (
            types[-2:] == ["ReplyDrafted", "EmailSent"]
            if cid == delivery
            else types[-3:] == ["ReplyDrafted", "ApprovalDecided", "EmailSent"]
        )
    sends = [e for e in steps.seen if isinstance(e, SendEmail)]
    assert sorted(e.correlation_id for e in sends) == sorted([delivery, refund])  # sent once each
    assert [e.correlation_id for e in steps.seen if isinstance(e, ApprovalRequested)] == [refund]
