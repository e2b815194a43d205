"""The customer-service e-mail rules, tested purely: event sequences in, decisions out. No broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from customer_email import CUSTOMER_EMAIL, DEFINITIONS, definition
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
from customer_email.guard import draft_hash
from customer_email.rules import (
    APPROVAL_REMINDER,
    APPROVAL_TIMEOUT,
    MAX_REPAIRS,
    MAX_RETRIES,
    SEND_UNCERTAIN,
    STEP_TIMEOUTS,
    Budgets,
    CustomerEmailProcess,
    EmailState,
    timeout_timer,
    upcast_v1,
)
from pm.events import (
    ApprovalDecided,
    ApprovalDecidedPayload,
    ApprovalReminder,
    ApprovalRequested,
    Event,
    LlmCall,
    StepFailed,
    TimerFired,
    TimerPayload,
    TimerSpec,
    command_id,
    derive_id,
)
from pm.process import Decision, Status

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CID = "<msg-1@mail.example.com>"
CUSTOMER = "jane@example.com"
SUPPORT = "support@shop.example"
LLM = LlmCall(provider="offline", model="rules", prompt="[]", raw_output="{}")

ORDER = Order(
    order_id="A1001",
    customer_email=CUSTOMER,
    customer_name="Jane Doe",
    carrier="UPS",
    status="delivered",
    total_cents=12000,
    shipping_cost_cents=900,
)
REFUND_POLICY = RefundPolicy(
    category="refund_request",
    version="refund-v3",
    refund_shipping=True,
    max_refund_cents=5000,
    max_refund_ratio=0.5,
    allowed_promises=["refund_shipping", "refund", "reship"],
    summary="Refund up to half the order, shipping included.",
)
DELIVERY_POLICY = RefundPolicy(
    category="delivery_status",
    version="delivery-v1",
    refund_shipping=False,
    max_refund_cents=0,
    max_refund_ratio=0.0,
    allowed_promises=["investigate"],
    summary="Tell the customer where the parcel is.",
)
GOOD_BODY = "Hello Jane, your order A1001 was delivered by UPS yesterday. Kind regards, the support team."
GOOD_DRAFT = Draft(subject="Your order A1001", body=GOOD_BODY, order_id="A1001")
BAD_DRAFT = Draft(subject="Your order", body="Sorry.", order_id="A1001")
REFUND_DRAFT = Draft(
    subject="Your refund for A1001",
    body="Hello Jane, we are refunding the 9.00 USD shipping cost of order A1001. Kind regards.",
    order_id="A1001",
    refund_cents=900,
    promises=["refund_shipping"],
)


class Run:
    """Feeds events to a definition the way the runtime does and keeps what it needs to assert on."""

    def __init__(self, process: CustomerEmailProcess = CUSTOMER_EMAIL) -> None:
        self.process = process
        self.state: EmailState | None = None
        self.decisions: list[Decision[EmailState]] = []
        self.inputs: list[Event] = []
        self.timers: dict[str, TimerSpec] = {}  # every timer ever scheduled, for firing stale ones too
        self.n = 0

    def feed(self, event: Event, now: datetime | None = None) -> Decision[EmailState]:
        """Decide `event` at `now` (by default its own occurred_at: no time spent waiting in Kafka)."""
        if self.state is None:
            assert self.process.starts(event)
            self.state = self.process.initial_state(event)
        before = self.state
        self.inputs.append(event)
        decision = self.process.decide(before, event, event.occurred_at if now is None else now)
        if decision.rejection is not None:
            assert decision.state == before, "a rejected event must leave the state unchanged"
        self.state = decision.state
        self.timers.update({t.timer_id: t for t in decision.schedule})
        self.decisions.append(decision)
        return decision

    @property
    def s(self) -> EmailState:
        assert self.state is not None
        return self.state

    def event_id(self) -> str:
        self.n += 1
        return f"in-{self.n}"

    def at(self, minutes: float = 0) -> datetime:
        return T0 + timedelta(minutes=minutes)

    # ---- inputs

    def receive(
        self, order_id: str | None = "A1001", subject: str = "Where is my order?", now: datetime | None = None
    ) -> Decision[EmailState]:
        return self.feed(
            EmailReceived(
                event_id="email-1",
                correlation_id=CID,
                occurred_at=T0,
                payload=EmailReceivedPayload(
                    message_id=CID,
                    sender=f"Jane Doe <{CUSTOMER}>",
                    recipient=SUPPORT,
                    subject=subject,
                    body="Hi, where is my parcel?",
                    received_at=T0,
                    order_id=order_id,
                ),
            ),
            now,
        )

    def result(
        self,
        cls: type[Event],
        step: Step,
        payload: dict[str, Any],
        *,
        attempt: int | None = None,
        minutes: float = 1,
        now: datetime | None = None,
    ) -> Decision[EmailState]:
        attempt = attempt if attempt is not None else self.s.attempts[step.value]
        payload_type = cls.model_fields["payload"].annotation
        assert isinstance(payload_type, type)
        return self.feed(
            cls(
                event_id=self.event_id(),
                correlation_id=CID,
                causation_id=command_id(CID, step, attempt),
                occurred_at=self.at(minutes),
                payload=payload_type(command_id=command_id(CID, step, attempt), attempt=attempt, **payload),
            ),
            now,
        )

    def classified(
        self, intent: str = "delivery_status", risk: str = "low", order_id: str | None = None, **kw: Any
    ) -> Decision[EmailState]:
        return self.result(
            EmailClassified,
            Step.CLASSIFY,
            {"intent": intent, "risk": risk, "order_id": order_id, "confidence": 0.9, "llm": LLM},
            **kw,
        )

    def order(self, order: Order | None = ORDER, **kw: Any) -> Decision[EmailState]:
        payload = {"order_id": "A1001", "found": order is not None, "order": order}
        return self.result(OrderFetched, Step.FETCH_ORDER, payload, **kw)

    def orders(self, orders: list[Order], **kw: Any) -> Decision[EmailState]:
        """The answer to a lookup of the sender's open orders (no order ID was named)."""
        payload = {"found": bool(orders), "customer": CUSTOMER, "orders": orders}
        return self.result(OrderFetched, Step.FETCH_ORDER, payload, **kw)

    def follow_up(
        self,
        n: int,
        *,
        sender: str = f"Jane Doe <{CUSTOMER}>",
        body: str = "Any news? I still have not received it.",
        subject: str = "Re: Where is my order?",
        order_id: str | None = None,
        minutes: float = 30,
    ) -> Decision[EmailState]:
        """E-mail number `n` of the thread (the first is `receive`), from `sender`."""
        at = self.at(minutes)
        return self.feed(
            EmailReceived(
                event_id=f"email-{n}",
                correlation_id=CID,
                occurred_at=at,
                payload=EmailReceivedPayload(
                    message_id=f"<msg-{n}@mail.example.com>",
                    thread_id=CID,
                    sender=sender,
                    recipient=SUPPORT,
                    subject=subject,
                    body=body,
                    received_at=at,
                    order_id=order_id,
                ),
            )
        )

    def policy(self, policy: RefundPolicy = DELIVERY_POLICY, **kw: Any) -> Decision[EmailState]:
        return self.result(RefundPolicyFetched, Step.FETCH_REFUND_POLICY, {"policy": policy}, **kw)

    def drafted(self, draft: Draft = GOOD_DRAFT, **kw: Any) -> Decision[EmailState]:
        return self.result(ReplyDrafted, Step.DRAFT_REPLY, {"draft": draft, "llm": LLM}, **kw)

    def sent(self, **kw: Any) -> Decision[EmailState]:
        payload = {"to": CUSTOMER, "message_id": "<reply-1@shop>", "smtp_response": "250 OK"}
        return self.result(EmailSent, Step.SEND_EMAIL, payload, **kw)

    def failed(
        self,
        step: Step,
        *,
        retryable: bool,
        uncertain: bool = False,
        reason: str = "boom",
        errors: list[str] | None = None,
        **kw: Any,
    ) -> Decision[EmailState]:
        payload = {
            "step": step.value,
            "retryable": retryable,
            "uncertain": uncertain,
            "reason": reason,
            "errors": errors or [],
        }
        return self.result(StepFailed, step, payload, **kw)

    def fire(self, name: str, *, timer_id: str | None = None) -> Decision[EmailState]:
        """Fire the live timer called `name` (or any timer ever scheduled, by ID) at its due time."""
        if timer_id is None:
            live = [tid for tid, n in self.s.timers.items() if n == name]
            assert len(live) == 1, f"expected one live {name} timer, have {self.s.timers}"
            timer_id = live[0]
        spec = self.timers[timer_id]
        return self.feed(
            TimerFired(
                event_id=f"fired-{timer_id}",
                correlation_id=CID,
                causation_id=timer_id,
                occurred_at=spec.due_at,
                payload=TimerPayload(timer_id=timer_id, name=spec.name, due_at=spec.due_at),
            )
        )

    def decide_approval(self, decision: str = "approve", **overrides: Any) -> Decision[EmailState]:
        approval = self.s.approval
        assert approval is not None
        fields: dict[str, Any] = {
            "approval_id": approval.approval_id,
            "decision": decision,
            "reviewer": "alice",
            "draft_hash": approval.draft_hash,
            "policy_version": approval.policy_version,
            "decided_at": approval.requested_at + timedelta(hours=1),
            "reason": "not covered" if decision == "reject" else None,
        }
        fields.update(overrides)
        return self.feed(
            ApprovalDecided(
                event_id=self.event_id(),
                correlation_id=CID,
                occurred_at=fields["decided_at"],
                payload=ApprovalDecidedPayload(**fields),
            )
        )

    # ---- common prefixes

    def to_drafting(self, intent: str = "delivery_status", risk: str = "low") -> Decision[EmailState]:
        self.receive()
        self.classified(intent, risk)
        self.order()
        return self.policy(REFUND_POLICY if intent == "refund_request" else DELIVERY_POLICY)

    def to_approval(self) -> Decision[EmailState]:
        self.to_drafting("refund_request")
        return self.drafted(REFUND_DRAFT)


def only(decision: Decision[EmailState], cls: type[Event]) -> Any:
    found = [c for c in decision.commands if isinstance(c, cls)]
    assert len(found) == 1, decision.commands
    return found[0]


def assert_ignored(before: EmailState, decision: Decision[EmailState]) -> None:
    assert decision.rejection is None
    assert decision.state == before
    assert decision == Decision(before)


# ---------------------------------------------------------------- definition


def test_definition_contract() -> None:
    assert CUSTOMER_EMAIL.name == "customer-email" and CUSTOMER_EMAIL.version == 2
    assert CUSTOMER_EMAIL.state_type is EmailState and dict(CUSTOMER_EMAIL.upcasters) == {1: upcast_v1}
    assert DEFINITIONS == (CUSTOMER_EMAIL,) and definition("customer-email") is CUSTOMER_EMAIL
    fired = TimerFired(
        event_id="x",
        correlation_id=CID,
        occurred_at=T0,
        payload=TimerPayload(timer_id="t", name="n", due_at=T0),
    )
    assert not CUSTOMER_EMAIL.starts(fired)
    run = Run()
    run.receive()
    assert run.s.email.sender == f"Jane Doe <{CUSTOMER}>" and type(run.s.email).__name__ == "Email"
    with pytest.raises(KeyError):
        definition("nope")


# ---------------------------------------------------------------- happy paths


def test_happy_path_without_approval() -> None:
    run = Run()
    d = run.receive()
    cls = only(d, ClassifyEmail)
    assert cls.event_id == cls.payload.command_id == command_id(CID, Step.CLASSIFY, 1)
    assert cls.causation_id == "email-1" and cls.occurred_at == T0 and cls.payload.attempt == 1
    assert d.schedule == (
        TimerSpec(
            timer_id=timeout_timer(CID, Step.CLASSIFY, 1),
            name="timeout:classify",
            due_at=T0 + STEP_TIMEOUTS[Step.CLASSIFY],
        ),
    )
    assert run.s.stage == "classifying" and run.s.status is Status.RUNNING

    d = run.classified()
    fetch_order, fetch_policy = only(d, FetchOrder), only(d, FetchRefundPolicy)
    assert fetch_order.payload.order_id == "A1001" and fetch_policy.payload.category == "delivery_status"
    assert fetch_order.occurred_at == run.at(1) and fetch_order.causation_id == "in-1"
    assert d.cancel == (timeout_timer(CID, Step.CLASSIFY, 1),)
    assert sorted(t.name for t in d.schedule) == ["timeout:fetch-order", "timeout:fetch-refund-policy"]
    assert run.s.pending.keys() == {"fetch-order", "fetch-refund-policy"}

    assert run.order().commands == ()
    d = run.policy()
    draft_cmd = only(d, DraftReply)
    assert draft_cmd.payload.order == ORDER and draft_cmd.payload.policy == DELIVERY_POLICY
    assert draft_cmd.payload.violations == [] and draft_cmd.payload.previous_draft is None

    d = run.drafted()
    send = only(d, SendEmail)
    # The reply goes to the parsed address alone (sender was "Jane Doe <jane@example.com>").
    assert send.payload.to == CUSTOMER and send.payload.body == GOOD_BODY
    assert send.payload.subject == "Re: Where is my order?" and send.payload.in_reply_to == CID
    assert send.event_id == command_id(CID, Step.SEND_EMAIL, 1) and d.publish == ()
    assert run.s.stage == "sending"

    d = run.sent()
    assert d.commands == () and d.cancel == (timeout_timer(CID, Step.SEND_EMAIL, 1),)
    assert run.s.status == "sent" and run.s.stage == "done" and run.s.reason is None
    assert run.s.pending == {} and run.s.timers == {} and run.s.sent_message_id == "<reply-1@shop>"


def test_refund_path_waits_for_approval_then_sends_once() -> None:
    run = Run()
    d = run.to_approval()
    assert d.commands == ()
    (req,) = d.publish
    assert isinstance(req, ApprovalRequested) and req.topic == "approvals.requested"
    p = req.payload
    approval = run.s.approval
    assert approval is not None and p.approval_id == approval.approval_id
    assert req.event_id == derive_id(CID, "ApprovalRequested", p.approval_id)
    # The proposal is the draft itself (its hash binds the decision); the context what the reviewer needs.
    assert Draft.model_validate_json(p.proposal) == REFUND_DRAFT and p.draft_hash == draft_hash(REFUND_DRAFT)
    assert p.proposal_type == "Draft" and p.editable == "body"
    context = json.loads(p.context)
    assert p.policy_version == "refund-v3" and context["intent"] == "refund_request"
    assert Order.model_validate(context["order"]) == ORDER
    assert p.reasons == [
        "refund intent (refund_request)",
        "offers a refund of 900 cents",
        "makes promises: refund_shipping",
        "the reply mentions money, a refund or a commitment (amounts 9.00 usd; terms refund)",
    ]
    assert p.findings == [] and p.requested_at == run.at(1)
    assert p.deadline == run.at(1) + APPROVAL_TIMEOUT
    assert run.s.status is Status.WAITING_FOR_APPROVAL and run.s.stage == "awaiting_approval"
    assert sorted(t.name for t in d.schedule) == [
        "approval-deadline",
        "approval-reminder",
    ]
    reminder = next(t for t in d.schedule if t.name == "approval-reminder")
    assert reminder.due_at == run.at(1) + APPROVAL_REMINDER

    d = run.decide_approval("approve")
    assert d.rejection is None
    assert only(d, SendEmail).payload.body == REFUND_DRAFT.body
    assert set(d.cancel) == {t.timer_id for t in run.decisions[-2].schedule}
    assert run.s.status is Status.RUNNING and run.s.approval is not None
    assert run.s.approval.decision == "approve" and run.s.approval.reviewer == "alice"
    run.sent()
    assert run.s.status == "sent"


def test_high_risk_needs_approval_even_without_refund() -> None:
    run = Run()
    run.to_drafting("delivery_status", risk="high")
    d = run.drafted()
    assert d.commands == () and d.publish[0].payload.reasons == ["high risk"]


def test_reject_ends_the_process_without_sending() -> None:
    run = Run()
    run.to_approval()
    d = run.decide_approval("reject", reason="customer is abusing refunds")
    assert d.commands == () and run.s.status is Status.REJECTED
    assert run.s.reason == "rejected by alice: customer is abusing refunds" and run.s.timers == {}
    assert len(d.cancel) == 2


@pytest.mark.parametrize("first", ["order", "policy"])
def test_fan_in_drafts_only_when_both_results_are_in(first: str) -> None:
    run = Run()
    run.receive()
    run.classified()
    d1 = run.order() if first == "order" else run.policy()
    assert d1.commands == () and run.s.stage == "fetching"
    d2 = run.policy() if first == "order" else run.order()
    assert only(d2, DraftReply).payload.attempt == 1 and run.s.stage == "drafting"


def test_order_id_from_the_classification_when_the_email_has_none() -> None:
    run = Run()
    run.receive(order_id=None)
    assert only(run.classified(order_id="A1001"), FetchOrder).payload.order_id == "A1001"


# ---------------------------------------------------------------- routing to a human


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda r: (r.receive(), r.classified("other")), "intent 'other' is not handled automatically"),
        (lambda r: (r.receive(), r.classified("cancel_subscription")), "intent 'cancel_subscription'"),
        (lambda r: (r.receive(order_id=None), r.classified(), r.orders([])), "sender has no open order"),
        (lambda r: (r.receive(), r.classified(), r.order(None)), "order A1001 not found"),
        (
            lambda r: (
                r.receive(),
                r.classified(),
                r.order(ORDER.model_copy(update={"customer_email": "bob@x.org"})),
            ),
            "order A1001 belongs to another customer",
        ),
        (
            lambda r: (r.receive(), r.failed(Step.CLASSIFY, retryable=False, reason="bad request")),
            "classify failed: bad request",
        ),
    ],
)
def test_unhandled_paths_escalate(setup: Callable[[Run], Any], reason: str) -> None:
    run = Run()
    setup(run)
    assert run.s.status is Status.ESCALATED and run.s.reason is not None and reason in run.s.reason
    assert run.s.pending == {} and run.s.timers == {} and run.s.stage == "done"
    assert run.decisions[-1].commands == ()


def test_escalation_cancels_every_live_timer() -> None:
    run = Run()
    run.receive()
    run.classified()
    live = set(run.s.timers)
    d = run.order(None)
    assert set(d.cancel) == live and len(live) == 2


# ---------------------------------------------------------------- repair loop


def test_repair_loop_then_pass() -> None:
    run = Run()
    run.to_drafting()
    d = run.drafted(BAD_DRAFT)
    repair = only(d, DraftReply)
    assert repair.payload.attempt == 2 and repair.event_id == command_id(CID, Step.DRAFT_REPLY, 2)
    assert repair.payload.previous_draft == BAD_DRAFT
    assert any("body too short" in v for v in repair.payload.violations)
    assert run.s.repairs == 1 and run.s.violations == repair.payload.violations
    d = run.drafted(GOOD_DRAFT)
    assert only(d, SendEmail).payload.body == GOOD_BODY and run.s.violations == []


def test_repair_exhaustion_escalates() -> None:
    run = Run()
    run.to_drafting()
    for attempt in range(1, MAX_REPAIRS + 1):
        assert only(run.drafted(BAD_DRAFT), DraftReply).payload.attempt == attempt + 1
    d = run.drafted(BAD_DRAFT)
    assert d.commands == () and run.s.status is Status.ESCALATED
    assert run.s.reason is not None and run.s.reason.startswith("draft failed the guard: body too short")
    assert f"after {MAX_REPAIRS} repairs" in run.s.reason


def test_failed_draft_step_counts_as_a_repair() -> None:
    run = Run()
    run.to_drafting()
    d = run.failed(Step.DRAFT_REPLY, retryable=False, reason="schema violation", errors=["body: missing"])
    repair = only(d, DraftReply)
    assert repair.payload.violations == ["body: missing"] and run.s.repairs == 1
    # A retryable one waits for a durable backoff timer before the repair goes out.
    d = run.failed(Step.DRAFT_REPLY, retryable=True, reason="rate limited")
    assert d.commands == () and [t.name for t in d.schedule] == ["retry:draft-reply"]
    assert only(run.fire("retry:draft-reply"), DraftReply).payload.violations == ["rate limited"]
    run.failed(Step.DRAFT_REPLY, retryable=False, reason="schema violation")
    assert run.s.status is Status.ESCALATED and run.s.reason is not None
    assert run.s.reason.startswith("draft-reply failed: schema violation")


# ---------------------------------------------------------------- timeouts and retries


def test_timeout_retries_within_budget_then_escalates() -> None:
    run = Run()
    run.receive()
    for retry in range(1, MAX_RETRIES[Step.CLASSIFY] + 1):
        d = run.fire("timeout:classify")
        cmd = only(d, ClassifyEmail)
        assert cmd.payload.attempt == retry + 1 and cmd.event_id == command_id(CID, Step.CLASSIFY, retry + 1)
        assert [t.timer_id for t in d.schedule] == [timeout_timer(CID, Step.CLASSIFY, retry + 1)]
        assert (
            d.schedule[0].due_at
            == run.timers[timeout_timer(CID, Step.CLASSIFY, retry)].due_at + STEP_TIMEOUTS[Step.CLASSIFY]
        )
    d = run.fire("timeout:classify")
    assert d.commands == () and run.s.status is Status.ESCALATED
    assert run.s.reason == f"classify timed out after {MAX_RETRIES[Step.CLASSIFY] + 1} attempts"


def test_timers_count_from_the_decision_time_not_from_when_the_input_happened() -> None:
    # Inputs that waited in Kafka (backpressure, an outage) must not start with expired timers.
    run = Run()
    late = T0 + timedelta(hours=1)
    d = run.receive(now=late)
    assert only(d, ClassifyEmail).occurred_at == late  # produced events carry the decision time
    assert d.schedule[0].due_at == late + STEP_TIMEOUTS[Step.CLASSIFY]
    d = run.classified(minutes=1, now=late + timedelta(minutes=1))
    assert {t.due_at for t in d.schedule} == {late + timedelta(minutes=1) + STEP_TIMEOUTS[Step.FETCH_ORDER]}
    d = run.failed(Step.FETCH_ORDER, retryable=True, minutes=2, now=late + timedelta(minutes=2))
    assert d.schedule[0].due_at == late + timedelta(minutes=2) + timedelta(seconds=5)  # backoff too
    run.fire("retry:fetch-order")
    run.order()
    run.policy(REFUND_POLICY)
    d = run.drafted(REFUND_DRAFT, minutes=3, now=late + timedelta(minutes=3))
    (request,) = [e for e in d.publish if isinstance(e, ApprovalRequested)]
    assert request.payload.requested_at == late + timedelta(minutes=3)
    assert request.payload.deadline == late + timedelta(minutes=3) + APPROVAL_TIMEOUT


def test_late_result_of_an_older_attempt_is_ignored() -> None:
    run = Run()
    run.receive()
    run.fire("timeout:classify")
    before = run.s
    assert_ignored(before, run.classified(attempt=1))
    assert only(run.classified(attempt=2), FetchOrder) is not None


def test_result_for_a_command_never_issued_is_ignored() -> None:
    run = Run()
    run.receive()
    before = run.s
    assert_ignored(before, run.classified(attempt=7))
    assert_ignored(before, run.order(attempt=1))  # fetch-order was never issued
    assert_ignored(
        before, run.result(StepFailed, Step.CLASSIFY, {"step": "nonsense", "retryable": True, "reason": "x"})
    )


def test_retryable_failure_waits_for_a_backoff_timer_then_retries() -> None:
    run = Run()
    run.receive()
    run.classified()
    d = run.failed(Step.FETCH_ORDER, retryable=True, reason="503", minutes=2)
    assert d.commands == () and [t.name for t in d.schedule] == ["retry:fetch-order"]
    assert d.schedule[0].due_at == run.at(2) + timedelta(seconds=5)
    assert "fetch-order" not in run.s.pending and "fetch-refund-policy" in run.s.pending
    d = run.fire("retry:fetch-order")
    assert only(d, FetchOrder).payload.attempt == 2 and run.s.pending["fetch-order"] == command_id(
        CID, Step.FETCH_ORDER, 2
    )
    # the backoff doubles, and the budget ends in escalation
    for retry in range(2, MAX_RETRIES[Step.FETCH_ORDER] + 1):
        d = run.failed(Step.FETCH_ORDER, retryable=True, reason="503")
        assert d.schedule[0].due_at - run.at(1) == timedelta(seconds=5 * 2 ** (retry - 1))
        run.fire("retry:fetch-order")
    run.failed(Step.FETCH_ORDER, retryable=True, reason="503")
    assert run.s.status is Status.ESCALATED and run.s.reason == "fetch-order failed: 503"


def test_send_failures() -> None:
    # uncertain: never resend
    run = Run()
    run.to_drafting()
    run.drafted()
    d = run.failed(Step.SEND_EMAIL, retryable=True, uncertain=True, reason="crashed while sending")
    assert d.commands == () and run.s.status is Status.ESCALATED and run.s.reason == SEND_UNCERTAIN
    # a timeout is uncertain too
    run = Run()
    run.to_drafting()
    run.drafted()
    d = run.fire("timeout:send-email")
    assert d.commands == () and run.s.status is Status.ESCALATED and SEND_UNCERTAIN in (run.s.reason or "")
    # a failure the consumer reports as definitely not sent is retried with a new command ID
    run = Run()
    run.to_drafting()
    run.drafted()
    run.failed(Step.SEND_EMAIL, retryable=True, reason="connection refused")
    assert only(run.fire("retry:send-email"), SendEmail).payload.attempt == 2


# ---------------------------------------------------------------- late and stale inputs


def test_late_results_after_escalation_are_ignored() -> None:
    run = Run()
    run.receive()
    run.classified()
    run.order(None)
    assert run.s.status is Status.ESCALATED
    before = run.s
    assert_ignored(before, run.policy())
    assert_ignored(before, run.failed(Step.FETCH_REFUND_POLICY, retryable=True))
    assert_ignored(before, run.fire("", timer_id=timeout_timer(CID, Step.FETCH_REFUND_POLICY, 1)))


def test_stale_timers_are_ignored() -> None:
    run = Run()
    run.receive()
    run.classified()
    before = run.s
    # the classify timeout was cancelled when classification arrived
    assert_ignored(before, run.fire("", timer_id=timeout_timer(CID, Step.CLASSIFY, 1)))
    # a timer this process never scheduled
    run.timers["bogus"] = TimerSpec(timer_id="bogus", name="timeout:fetch-order", due_at=T0)
    assert_ignored(before, run.fire("", timer_id="bogus"))
    # a live timer ID under another name
    live = next(iter(before.timers))
    renamed = TimerFired(
        event_id="f",
        correlation_id=CID,
        occurred_at=T0,
        payload=TimerPayload(timer_id=live, name="retry:classify", due_at=T0),
    )
    assert_ignored(before, run.feed(renamed))


def test_duplicate_email_received_is_rejected() -> None:
    run = Run()
    run.receive()
    before = run.s
    d = run.receive()
    assert d.rejection == f"e-mail {CID!r} already received for this process" and d.state == before


# ---------------------------------------------------------------- approvals


def _waiting() -> Run:
    run = Run()
    run.to_approval()
    return run


def _decided_then(kind: str) -> Run:
    run = _waiting()
    run.decide_approval(kind)
    return run


BAD_DECISIONS: list[tuple[str, Callable[[], Run], dict[str, Any], str]] = [
    ("unknown approval", _waiting, {"approval_id": "nope"}, "unknown approval_id nope"),
    ("hash mismatch", _waiting, {"draft_hash": draft_hash(GOOD_DRAFT)}, "draft hash mismatch"),
    ("policy mismatch", _waiting, {"policy_version": "refund-v2"}, "policy version mismatch"),
    (
        "expired",
        _waiting,
        {"decided_at": T0 + timedelta(minutes=1) + APPROVAL_TIMEOUT + timedelta(seconds=1)},
        "expired",
    ),
    ("edit without body", _waiting, {"decision": "edit"}, "edit without an edited body"),
    ("duplicate after approve", lambda: _decided_then("approve"), {}, "duplicate: approval already decided"),
    ("duplicate after reject", lambda: _decided_then("reject"), {}, "duplicate: approval already decided"),
]


@pytest.mark.parametrize(
    ("name", "setup", "overrides", "reason"), BAD_DECISIONS, ids=[b[0] for b in BAD_DECISIONS]
)
def test_bad_approval_decisions_are_rejected_and_change_nothing(
    name: str, setup: Callable[[], Run], overrides: dict[str, Any], reason: str
) -> None:
    run = setup()
    before = run.s
    d = run.decide_approval(overrides.pop("decision", "approve"), **overrides)
    assert d.rejection is not None and d.rejection.startswith(reason), d.rejection
    assert d.state is before and d.commands == d.publish == () and d.schedule == d.cancel == ()


def test_late_decision_after_the_deadline_escalated() -> None:
    run = _waiting()
    approval = run.s.approval
    assert approval is not None
    run.fire("approval-deadline")
    before = run.s
    d = run.decide_approval("approve")
    assert d.rejection == "late: process is already escalated" and d.state is before


def test_decision_while_not_waiting_is_rejected() -> None:
    run = Run()
    run.to_drafting()
    before = run.s

    def stray(event_id: str) -> ApprovalDecided:
        """A decision for an approval that was never requested."""
        return ApprovalDecided(
            event_id=event_id,
            correlation_id=CID,
            occurred_at=T0,
            payload=ApprovalDecidedPayload(
                approval_id="x",
                decision="approve",
                reviewer="alice",
                draft_hash="h",
                policy_version="v",
                decided_at=T0,
            ),
        )

    d = run.feed(stray("a"))
    assert d.rejection == "not waiting for approval: no approval was requested" and d.state is before
    run.drafted()
    run.sent()
    d = run.feed(stray("b"))
    assert d.rejection == "late: process is already sent"


def test_edit_that_passes_the_guard_sends_the_edited_text() -> None:
    run = _waiting()
    edited = "Hello Jane, as promised we refund the shipping cost of order A1001 (9.00 USD). Best, Support."
    d = run.decide_approval("edit", edited_body=edited)
    assert d.rejection is None and only(d, SendEmail).payload.body == edited
    assert run.s.draft is not None and run.s.draft.body == edited
    assert run.s.draft.refund_cents == REFUND_DRAFT.refund_cents and run.s.approval is not None
    assert run.s.approval.decision == "edit"


def test_edit_that_fails_the_guard_is_rejected_and_the_process_keeps_waiting() -> None:
    run = _waiting()
    before = run.s
    d = run.decide_approval(
        "edit", edited_body="Refund for order A1001 and also order A1002, see bob@evil.example."
    )
    assert d.rejection is not None and d.rejection.startswith("edited reply fails the guard:")
    assert "another order ID: A1002" in d.rejection and "bob@evil.example" in d.rejection
    assert d.state is before and run.s.status is Status.WAITING_FOR_APPROVAL
    assert only(run.decide_approval("approve"), SendEmail).payload.body == REFUND_DRAFT.body


def test_reminders_then_deadline_escalates() -> None:
    run = _waiting()
    approval = run.s.approval
    assert approval is not None
    expected = int(APPROVAL_TIMEOUT / APPROVAL_REMINDER) - 1  # reminders strictly before the deadline
    for n in range(1, expected + 1):
        d = run.fire("approval-reminder")
        (reminder,) = d.publish
        assert isinstance(reminder, ApprovalReminder) and reminder.payload.reminder == n
        assert (
            reminder.payload.approval_id == approval.approval_id
            and reminder.occurred_at == approval.requested_at + n * APPROVAL_REMINDER
        )
        assert run.s.status is Status.WAITING_FOR_APPROVAL and run.s.approval is not None
        assert run.s.approval.reminders == n
    assert "approval-reminder" not in run.s.timers.values()  # bounded: none after the deadline
    d = run.fire("approval-deadline")
    assert d.commands == () and run.s.status is Status.ESCALATED
    assert run.s.reason == f"no approval decision by {approval.deadline.isoformat()}"


# ---------------------------------------------------------------- determinism and storage


def _scenario(process: CustomerEmailProcess = CUSTOMER_EMAIL) -> Run:
    run = Run(process)
    run.receive()
    run.fire("timeout:classify")
    run.classified("refund_request")
    run.policy(REFUND_POLICY)
    run.failed(Step.FETCH_ORDER, retryable=True)
    run.fire("retry:fetch-order")
    run.order()
    run.drafted(BAD_DRAFT)
    run.drafted(REFUND_DRAFT)
    run.fire("approval-reminder")
    run.decide_approval("edit", edited_body=REFUND_DRAFT.body + " Thanks for your patience.")
    run.sent()
    return run


def test_same_inputs_give_identical_decisions() -> None:
    first, second = _scenario(), _scenario(CustomerEmailProcess())
    assert first.s.status == "sent"
    assert first.decisions == second.decisions
    assert [d.state.model_dump_json() for d in first.decisions] == [
        d.state.model_dump_json() for d in second.decisions
    ]


def test_state_survives_a_json_round_trip_mid_process() -> None:
    run = _waiting()
    restored = EmailState.model_validate_json(run.s.model_dump_json())
    assert restored == run.s
    approve = run.decide_approval("approve")
    assert run.s.stage == "sending"
    # the state read back from storage decides exactly like the one in memory
    assert CUSTOMER_EMAIL.decide(restored, run.inputs[-1], run.inputs[-1].occurred_at) == approve


def test_budgets_are_configurable() -> None:
    quick = CustomerEmailProcess(
        Budgets(step_timeouts={s: timedelta(seconds=1) for s in Step}, max_repairs=0)
    )
    run = Run(quick)
    d = run.receive()
    assert d.schedule[0].due_at == T0 + timedelta(seconds=1)
    run.classified()
    run.order()
    run.policy()
    run.drafted(BAD_DRAFT)
    assert run.s.status is Status.ESCALATED


def test_inputs_that_are_not_part_of_the_process() -> None:
    run = Run()
    d = run.receive()
    before = run.s
    stray = d.commands[0]  # a command fed back as an input is not something this process decides on
    assert run.feed(stray).rejection == "ClassifyEmail is not an input of customer-email"
    assert run.s is before
    run.classified("other")
    ended = run.s
    d = run.receive()  # the process is over: the same e-mail again changes nothing (a new one would)
    assert d.rejection == f"e-mail {CID!r} already received for this process" and d.state is ended


def test_resume_issues_the_pending_steps_again_with_new_command_ids() -> None:
    """`pm resume ID` on the bundled app: each pending step gets a new attempt and a fresh timeout."""
    from pm.events import OperatorCommand, OperatorCommandPayload

    sim = Run()
    first = sim.receive()
    event = sim.inputs[0]
    (classify,) = first.commands
    command = OperatorCommand(
        event_id="op-1",
        correlation_id=event.correlation_id,
        occurred_at=event.occurred_at,
        payload=OperatorCommandPayload(action="resume", operator="ops"),
    )
    resumed = CUSTOMER_EMAIL.resume(first.state, command, event.occurred_at)
    assert resumed.rejection is None
    (again,) = resumed.commands
    assert again.type == classify.type and again.event_id != classify.event_id
    assert again.payload.attempt == classify.payload.attempt + 1
    assert len(resumed.schedule) == 1 and resumed.cancel == tuple(first.state.timers)
    ended = first.state.model_copy(update={"status": "sent"})
    assert CUSTOMER_EMAIL.resume(ended, command, event.occurred_at).rejection is not None
    idle = first.state.model_copy(update={"pending": {}})
    assert "escalate" in (CUSTOMER_EMAIL.resume(idle, command, event.occurred_at).rejection or "")
