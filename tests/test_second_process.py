"""A second process written against the public API only (pm.process + pm.events): an invoice dispute.

An e-mail whose subject mentions an invoice opens a dispute: fetch the order, acknowledge the
dispute quoting the order total, done. No order, order not found, or no answer in time: escalate.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from customer_email.events import (
    EmailReceived,
    EmailReceivedPayload,
    EmailSent,
    EmailSentPayload,
    FetchOrder,
    FetchOrderPayload,
    Order,
    OrderFetched,
    OrderFetchedPayload,
    SendEmail,
    SendEmailPayload,
    Step,
)
from pm.events import Event, TimerFired, TimerPayload, TimerSpec, command_id, derive_id
from pm.process import Decision, ProcessDefinition, ProcessState, Status, Upcaster

# ---------------------------------------------------------------- the process (under 80 lines)
FETCH_TIMEOUT = timedelta(minutes=10)


class DisputeState(ProcessState):
    customer: str
    message_id: str
    order_id: str | None = None
    pending: str | None = None  # command ID awaiting its result
    timer_id: str | None = None  # live fetch timeout


def issue(
    s: DisputeState, e: Event, now: datetime, cls: type[Event], step: Step, payload: type, **fields: Any
) -> Event:
    cid = command_id(s.correlation_id, step, 1)  # one attempt: this process escalates instead of retrying
    env = {"correlation_id": s.correlation_id, "causation_id": e.event_id, "occurred_at": now}
    return cls(event_id=cid, **env, payload=payload(command_id=cid, attempt=1, **fields))


def end(s: DisputeState, status: Status, reason: str | None = None) -> Decision[DisputeState]:
    update = {"status": status, "reason": reason, "pending": None, "timer_id": None}
    return Decision(s.model_copy(update=update), cancel=(s.timer_id,) if s.timer_id else ())


class InvoiceDispute:
    name = "invoice-dispute"
    version = 1
    state_type = DisputeState
    upcasters: Mapping[int, Upcaster] = {}

    def starts(self, event: Event) -> bool:
        return isinstance(event, EmailReceived) and "invoice" in event.payload.subject.lower()

    def initial_state(self, event: Event) -> DisputeState:
        p = event.payload
        return DisputeState(correlation_id=event.correlation_id, customer=p.sender, message_id=p.message_id)

    def decide(self, s: DisputeState, e: Event, now: datetime) -> Decision[DisputeState]:
        if s.terminal:
            return Decision(s)  # over: late results and timers change nothing
        if isinstance(e, EmailReceived):
            if e.payload.order_id is None:
                return end(s, Status.ESCALATED, "no order ID")
            cmd = issue(
                s, e, now, FetchOrder, Step.FETCH_ORDER, FetchOrderPayload, order_id=e.payload.order_id
            )
            timer_id = derive_id(s.correlation_id, "timer", "fetch", 1)
            timer = TimerSpec(timer_id=timer_id, name="fetch", due_at=now + FETCH_TIMEOUT)
            update = {"order_id": e.payload.order_id, "pending": cmd.event_id, "timer_id": timer_id}
            return Decision(s.model_copy(update=update), commands=(cmd,), schedule=(timer,))
        if isinstance(e, TimerFired):
            stale = e.payload.timer_id != s.timer_id
            return Decision(s) if stale else end(s, Status.ESCALATED, "order service did not answer")
        if getattr(e.payload, "command_id", None) != s.pending:
            return Decision(s)  # a result we are not waiting for
        if isinstance(e, OrderFetched):
            order = e.payload.order
            if order is None:
                return end(s, Status.ESCALATED, "order not found")
            total = f"{order.total_cents / 100:.2f} {order.currency}"
            body = f"We opened a dispute for the invoice of order {order.order_id} ({total}). Billing will reply."
            cmd = issue(
                s,
                e,
                now,
                SendEmail,
                Step.SEND_EMAIL,
                SendEmailPayload,
                to=s.customer,
                subject="Your invoice dispute",
                body=body,
                in_reply_to=s.message_id,
            )
            update = {"pending": cmd.event_id, "timer_id": None}
            return Decision(
                s.model_copy(update=update), commands=(cmd,), cancel=(s.timer_id,) if s.timer_id else ()
            )
        if isinstance(e, EmailSent):
            return end(s, "sent")
        return Decision(s, rejection=f"{e.type} is not part of an invoice dispute")


INVOICE_DISPUTE: ProcessDefinition[DisputeState] = InvoiceDispute()
# ---------------------------------------------------------------- tests

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CID = "<inv-7@mail.example.com>"
ORDER = Order(
    order_id="A1001",
    customer_email="jane@example.com",
    customer_name="Jane",
    carrier="UPS",
    status="delivered",
    total_cents=12345,
    shipping_cost_cents=900,
)


def email(subject: str = "Wrong invoice", order_id: str | None = "A1001") -> EmailReceived:
    return EmailReceived(
        event_id="e1",
        correlation_id=CID,
        occurred_at=T0,
        payload=EmailReceivedPayload(
            message_id=CID,
            sender="jane@example.com",
            recipient="billing@shop.example",
            subject=subject,
            body="The invoice is wrong.",
            received_at=T0,
            order_id=order_id,
        ),
    )


def fetched(order: Order | None, minutes: int = 1) -> OrderFetched:
    cid = command_id(CID, Step.FETCH_ORDER, 1)
    return OrderFetched(
        event_id=f"r{minutes}",
        correlation_id=CID,
        occurred_at=T0 + timedelta(minutes=minutes),
        payload=OrderFetchedPayload(
            command_id=cid, attempt=1, order_id="A1001", found=order is not None, order=order
        ),
    )


def sent() -> EmailSent:
    cid = command_id(CID, Step.SEND_EMAIL, 1)
    return EmailSent(
        event_id="s1",
        correlation_id=CID,
        occurred_at=T0 + timedelta(minutes=2),
        payload=EmailSentPayload(
            command_id=cid, attempt=1, to="jane@example.com", message_id="<r1@shop>", smtp_response="250 OK"
        ),
    )


def fire(timer_id: str) -> TimerFired:
    return TimerFired(
        event_id=f"t-{timer_id}",
        correlation_id=CID,
        occurred_at=T0 + FETCH_TIMEOUT,
        payload=TimerPayload(timer_id=timer_id, name="fetch", due_at=T0 + FETCH_TIMEOUT),
    )


def run(*events: Event) -> list[Decision[DisputeState]]:
    state = INVOICE_DISPUTE.initial_state(events[0])
    decisions = []
    for event in events:
        decisions.append(INVOICE_DISPUTE.decide(state, event, event.occurred_at))
        state = decisions[-1].state
    return decisions


def test_starts_only_on_invoice_emails() -> None:
    assert INVOICE_DISPUTE.starts(email())
    assert not INVOICE_DISPUTE.starts(email(subject="Where is my parcel?"))
    assert not INVOICE_DISPUTE.starts(sent())


def test_dispute_is_acknowledged_with_the_order_total() -> None:
    d1, d2, d3 = run(email(), fetched(ORDER), sent())
    (fetch,) = d1.commands
    assert isinstance(fetch, FetchOrder) and fetch.payload.order_id == "A1001" and fetch.causation_id == "e1"
    assert d1.schedule[0].due_at == T0 + FETCH_TIMEOUT
    (reply,) = d2.commands
    assert (
        isinstance(reply, SendEmail)
        and "123.45 USD" in reply.payload.body
        and reply.payload.in_reply_to == CID
    )
    assert d2.cancel == (d1.schedule[0].timer_id,)
    assert d3.state.status == "sent" and d3.state.pending is None


def test_unhappy_paths_escalate_and_stale_inputs_change_nothing() -> None:
    assert run(email(order_id=None))[0].state.reason == "no order ID"
    assert run(email(), fetched(None))[-1].state.reason == "order not found"
    d1, timeout, late = run(email(), fire(derive_id(CID, "timer", "fetch", 1)), fetched(ORDER, 20))
    assert timeout.state.status is Status.ESCALATED and late == Decision(timeout.state)
    d1, d2, stale = run(email(), fetched(ORDER), fire(derive_id(CID, "timer", "fetch", 1)))
    assert stale == Decision(d2.state) and d2.state.status is Status.RUNNING
    assert run(email(), sent())[-1] == Decision(d1.state)  # a result for a command never issued


def test_deterministic() -> None:
    events = (email(), fetched(ORDER), sent())
    assert run(*events) == run(*events)


def test_uses_only_the_public_process_api() -> None:
    tree = ast.parse(Path(__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in modules if m.startswith("pm")} == {"pm.events", "pm.process"}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not any(name.startswith("_") for name in imported)
