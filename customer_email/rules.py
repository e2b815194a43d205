"""The customer-service e-mail: the reference process, all of its rules in one file.

Read top to bottom: budgets and timeouts, the state, then `decide`, one handler per input.

    EmailReceived      -> ClassifyEmail
    EmailClassified    -> FetchOrder + FetchRefundPolicy together (fan out)
    both fetched       -> DraftReply (fan in, either order)
    ReplyDrafted       -> guard: fails -> DraftReply again with the violations (MAX_REPAIRS), then escalate
                          passes -> approval needed? ApprovalRequested, wait : SendEmail
    ApprovalDecided    -> approve: SendEmail | reject: rejected | edit: guard, then SendEmail
    EmailSent          -> sent

Escalation (terminal `escalated`, a human takes over) is the answer to everything the rules
do not cover: unknown intent, no order ID, order not found, a step that fails for good or
times out past its retry budget, a draft that keeps failing the guard, an approval nobody
gives in time, an e-mail that may or may not have been sent. Every loop has a budget.

Pure: time comes from `now`, the time the runtime decides the input (recorded in the journal,
so a replay passes it again): step timeouts, backoffs and the approval deadline count from when
the PM acts, not from when the input happened, so an input that waited in Kafka behind
backpressure does not start with expired timers. Every ID is derived from the correlation ID,
the step and the attempt, so replaying the same inputs gives the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from customer_email.addresses import AddressError, parse_address
from customer_email.approval_request import approval_payload, edited_draft
from customer_email.events import (
    ClassifyEmail,
    ClassifyEmailPayload,
    Draft,
    DraftReply,
    DraftReplyPayload,
    Email,
    EmailClassified,
    EmailReceived,
    EmailSent,
    FetchOrder,
    FetchOrderPayload,
    FetchRefundPolicy,
    FetchRefundPolicyPayload,
    Order,
    OrderFetched,
    RefundPolicy,
    RefundPolicyFetched,
    ReplyDrafted,
    SendEmail,
    SendEmailPayload,
    Step,
)
from customer_email.guard import draft_hash, money_in_text, order_belongs_to, review_draft
from pm.events import (
    ApprovalDecided,
    ApprovalReminder,
    ApprovalReminderPayload,
    ApprovalRequested,
    Event,
    Model,
    StepFailed,
    TimerFired,
    Timestamp,
    derive_id,
)
from pm.integrity import shown
from pm.patterns import (
    RETRY,
    TIMEOUT,
    Effects,
    StepBudgets,
    all_in,
    answered,
    await_deadline,
    awaiting,
    cancel_timers,
    escalate,
    finish,
    issue,
    parse_timer,
    retry_later,
    set_reminder,
    spend_retry,
    take_timer,
    timed_out,
    timer_id,
    timer_name,
)
from pm.process import Decision, InvalidInput, ProcessState, Status, Upcaster

__all__ = [
    "NAME",
    "VERSION",
    "STEP_TIMEOUTS",
    "MAX_RETRIES",
    "RETRY_BACKOFF",
    "RETRY_BACKOFF_MAX",
    "MAX_REPAIRS",
    "APPROVAL_REMINDER",
    "APPROVAL_TIMEOUT",
    "KNOWN_INTENTS",
    "REFUND_INTENTS",
    "UNRISKY",
    "SEND_UNCERTAIN",
    "SENT",
    "Budgets",
    "Stage",
    "Classification",
    "Approval",
    "EmailState",
    "CustomerEmailProcess",
    "CUSTOMER_EMAIL",
    "reply_subject",
    "timeout_timer",
    "retry_timer",
]

NAME = "customer-email"
VERSION = 1

# ---------------------------------------------------------------- budgets (durable timers)

# How long a step may take before the PM gives up on that attempt.
STEP_TIMEOUTS: Mapping[str, timedelta] = {
    Step.CLASSIFY: timedelta(minutes=2),
    Step.FETCH_ORDER: timedelta(seconds=30),
    Step.FETCH_REFUND_POLICY: timedelta(seconds=30),
    Step.DRAFT_REPLY: timedelta(minutes=3),
    Step.SEND_EMAIL: timedelta(minutes=5),
}
# Retries after a timeout or a retryable failure, per step (attempts = 1 + retries).
MAX_RETRIES: Mapping[str, int] = {
    Step.CLASSIFY: 2,
    Step.FETCH_ORDER: 3,
    Step.FETCH_REFUND_POLICY: 3,
    Step.DRAFT_REPLY: 2,
    Step.SEND_EMAIL: 2,  # only after a failure the consumer reports as not sent; a send timeout escalates
}
# Backoff before retrying a failed step: RETRY_BACKOFF * 2**(retry-1), at most RETRY_BACKOFF_MAX.
# No jitter: decide is deterministic (the consumers jitter their own retries).
RETRY_BACKOFF = timedelta(seconds=5)
RETRY_BACKOFF_MAX = timedelta(minutes=5)
# Drafts sent back with the guard's violations (a failed draft step counts too), then escalate.
MAX_REPAIRS = 2
# Approval: a reminder every APPROVAL_REMINDER while pending, escalation at APPROVAL_TIMEOUT.
APPROVAL_REMINDER = timedelta(hours=4)
APPROVAL_TIMEOUT = timedelta(hours=24)

# ---------------------------------------------------------------- routing rules

# Intents the process answers; anything else ("other", unknown) goes to a human.
KNOWN_INTENTS = frozenset({"refund_request", "delivery_status", "complaint"})
# Intents whose reply always needs a human approval (so does any risk but low/medium, any claimed
# refund or promise, any money, refund or commitment in the text, and a money repair).
REFUND_INTENTS = frozenset({"refund_request"})
UNRISKY = frozenset({"low", "medium"})
SEND_UNCERTAIN = "send uncertain: a human must check the mailbox"
SENT = "sent"  # the outcome of a process whose reply went out
MAX_HEADER_CHARS = 998  # RFC 5322 line limit: message IDs and the subject go into reply headers

Stage = Literal["received", "classifying", "fetching", "drafting", "awaiting_approval", "sending", "done"]


@dataclass(frozen=True)
class Budgets(StepBudgets):
    """The timing and budget knobs, defaulting to the constants above (tests and demos shorten them)."""

    step_timeouts: Mapping[str, timedelta] = field(default_factory=lambda: dict(STEP_TIMEOUTS))
    max_retries: Mapping[str, int] = field(default_factory=lambda: dict(MAX_RETRIES))
    retry_backoff: timedelta = RETRY_BACKOFF
    retry_backoff_max: timedelta = RETRY_BACKOFF_MAX
    max_repairs: int = MAX_REPAIRS
    approval_reminder: timedelta = APPROVAL_REMINDER
    approval_timeout: timedelta = APPROVAL_TIMEOUT


# ---------------------------------------------------------------- state


class Classification(Model):
    intent: str
    risk: str
    order_id: str | None = None
    confidence: float


class Approval(Model):
    """The pending (or decided) approval: what the reviewer sees and must quote back."""

    approval_id: str
    draft_hash: str
    policy_version: str
    reasons: list[str]
    requested_at: Timestamp
    deadline: Timestamp
    reminders: int = 0
    decision: str | None = None  # approve / reject / edit, once applied
    reviewer: str | None = None
    decided_at: Timestamp | None = None


class EmailState(ProcessState):
    """Everything the process knows; a fold of its journal, readable in `pm inspect`.

    The step bookkeeping (attempts .. timers) is `pm.patterns.StepBookkeeping`, declared here in its
    historical place so the stored state keeps its field order.
    """

    stage: Stage = "received"
    email: Email
    classification: Classification | None = None
    order_id: str | None = None  # the order asked for (the e-mail's order_id, else the classification's)
    order: Order | None = None
    policy: RefundPolicy | None = None
    draft: Draft | None = None  # the latest draft (the one approved / sent once it passed the guard)
    violations: list[str] = Field(default_factory=list)  # guard findings sent back with the next draft
    repairs: int = 0
    # A draft once broke a money/promise rule: whatever the model drafts next, a human approves it.
    money_repair: bool = False
    attempts: dict[str, int] = Field(default_factory=dict)  # step -> last attempt issued
    retries: dict[str, int] = Field(default_factory=dict)  # step -> retries used
    pending: dict[str, str] = Field(default_factory=dict)  # step -> command_id awaiting its result
    timers: dict[str, str] = Field(default_factory=dict)  # live timer_id -> name; anything else is stale
    approval: Approval | None = None
    sent_message_id: str | None = None


# ---------------------------------------------------------------- IDs and helpers


def timeout_timer(correlation_id: str, step: Step, attempt: int) -> str:
    return timer_id(correlation_id, timer_name(TIMEOUT, step), attempt)


def retry_timer(correlation_id: str, step: Step, attempt: int) -> str:
    """The backoff timer that issues `attempt` of `step` when it fires."""
    return timer_id(correlation_id, timer_name(RETRY, step), attempt)


def reply_subject(subject: str) -> str:
    return subject if subject[:3].lower() == "re:" else f"Re: {subject}"


_RESULT_STEP: Mapping[type[Event], Step] = {
    EmailClassified: Step.CLASSIFY,
    OrderFetched: Step.FETCH_ORDER,
    RefundPolicyFetched: Step.FETCH_REFUND_POLICY,
    ReplyDrafted: Step.DRAFT_REPLY,
    EmailSent: Step.SEND_EMAIL,
}


# ---------------------------------------------------------------- the definition


class CustomerEmailProcess:
    """`ProcessDefinition` for the customer-service e-mail (deployed as `CUSTOMER_EMAIL`)."""

    name = NAME
    version = VERSION
    state_type = EmailState
    upcasters: Mapping[int, Upcaster] = {}

    def __init__(self, budgets: Budgets | None = None) -> None:
        self.budgets = budgets or Budgets()

    def starts(self, event: Event) -> bool:
        return isinstance(event, EmailReceived)

    def admit(self, event: Event) -> None:
        """Refuse a hostile or malformed start event (`InvalidInput`: the runtime dead-letters it).

        Called on live input only: a journal folded later holds what an older build admitted, and
        must rebuild as it was decided.
        """
        if not isinstance(event, EmailReceived):
            raise InvalidInput(f"a {event.type} does not start {NAME}")
        email = event.payload
        # The thread (or, without one, the message) is the process: anything else splits or hijacks one.
        if event.correlation_id not in (email.thread_id, email.message_id):
            raise InvalidInput(
                f"correlation ID {shown(event.correlation_id)} is neither the e-mail's thread ID "
                "nor its message ID"
            )
        # These become reply headers (In-Reply-To, Subject): refuse injection here, not at send time.
        for name, value in (("message_id", email.message_id), ("thread_id", email.thread_id or ""),
                            ("subject", email.subject)):  # fmt: skip
            if len(value) > MAX_HEADER_CHARS or any(ch < " " or ch == "\x7f" for ch in value):
                raise InvalidInput(f"{name} {shown(value)} has control characters or is over {MAX_HEADER_CHARS}")
        # The reply goes to the one parsed sender address; an e-mail without one never starts a process.
        try:
            parse_address(email.sender, field="sender")
            parse_address(email.recipient, field="recipient")
        except AddressError as exc:
            raise InvalidInput(str(exc)) from exc

    def initial_state(self, event: Event) -> EmailState:
        if not isinstance(event, EmailReceived):
            raise InvalidInput(f"a {event.type} does not start {NAME}")
        return EmailState(correlation_id=event.correlation_id, email=Email.model_validate(event.payload.model_dump()))

    def decide(self, state: EmailState, event: Event, now: datetime) -> Decision[EmailState]:
        if isinstance(event, ApprovalDecided):
            return self._on_approval(state, event, now)
        if state.terminal:
            return Decision(state)  # late results, stale timers, anything: the process is over
        fx = Effects(event, now)
        if isinstance(event, EmailReceived):
            if state.stage != "received":
                return Decision(state, rejection="e-mail already received for this process")
            state = self._issue(state, Step.CLASSIFY, fx)
            return fx.decision(state.model_copy(update={"stage": "classifying"}))
        if isinstance(event, TimerFired):
            return fx.decision(self._on_timer(state, event, fx))
        step = _result_step(event)
        if step is None and not isinstance(event, StepFailed):
            return Decision(state, rejection=f"{event.type} is not an input of {NAME}")
        if step is None or not awaiting(state, step, event.payload.command_id):
            return Decision(state)  # an older attempt's late answer, or a command we never issued
        state = answered(state, step, fx)
        if isinstance(event, StepFailed):
            state = self._on_failed(state, step, event, fx)
        elif isinstance(event, EmailClassified):
            state = self._on_classified(state, event, fx)
        elif isinstance(event, OrderFetched):
            state = self._on_order(state, event, fx)
        elif isinstance(event, RefundPolicyFetched):
            state = self._on_policy(state, event, fx)
        elif isinstance(event, ReplyDrafted):
            state = self._on_draft(state, event.payload.draft, fx)
        elif isinstance(event, EmailSent):
            sent = event.payload.message_id
            state = finish(state, SENT, None, fx, stage="done", sent_message_id=sent)
        return fx.decision(state)

    # ------------------------------------------------------------ step results

    def _on_classified(self, state: EmailState, event: EmailClassified, fx: Effects) -> EmailState:
        p = event.payload
        state = state.model_copy(
            update={
                "classification": Classification(
                    intent=p.intent, risk=p.risk, order_id=p.order_id, confidence=p.confidence
                ),
                # The e-mail's structured order_id (set upstream) beats the model's extraction.
                "order_id": state.email.order_id or p.order_id,
            }
        )
        if p.intent not in KNOWN_INTENTS:
            return _escalate(state, f"intent {p.intent!r} is not handled automatically", fx)
        # Every reply quotes an order (the guard checks it): without an order ID a human answers.
        if state.order_id is None:
            return _escalate(state, "no order ID in the e-mail or its classification", fx)
        state = self._issue(state, Step.FETCH_ORDER, fx)
        state = self._issue(state, Step.FETCH_REFUND_POLICY, fx)
        return state.model_copy(update={"stage": "fetching"})

    def _on_order(self, state: EmailState, event: OrderFetched, fx: Effects) -> EmailState:
        p = event.payload
        if not p.found or p.order is None:
            return _escalate(state, f"order {p.order_id} not found", fx)
        if not order_belongs_to(p.order, state.email):
            # A mistyped or hallucinated order ID must not put someone else's order in the reply.
            return _escalate(state, f"order {p.order_id} belongs to another customer", fx)
        return self._maybe_draft(state.model_copy(update={"order": p.order}), fx)

    def _on_policy(self, state: EmailState, event: RefundPolicyFetched, fx: Effects) -> EmailState:
        return self._maybe_draft(state.model_copy(update={"policy": event.payload.policy}), fx)

    def _maybe_draft(self, state: EmailState, fx: Effects) -> EmailState:
        """Fan in: draft once both the order and the policy are in, whichever came last."""
        if not all_in(state.order, state.policy):
            return state
        return self._issue(state.model_copy(update={"stage": "drafting"}), Step.DRAFT_REPLY, fx)

    def _on_draft(self, state: EmailState, draft: Draft, fx: Effects) -> EmailState:
        assert state.order is not None and state.policy is not None
        verdict = review_draft(draft, order=state.order, policy=state.policy, email=state.email)
        violations = verdict.violations
        state = state.model_copy(
            update={
                "draft": draft,
                "violations": violations,
                "money_repair": state.money_repair or bool(verdict.money),
            }
        )
        if violations:
            return self._repair(state, f"draft failed the guard: {'; '.join(violations)}", fx)
        reasons = self._approval_reasons(state, draft)
        if reasons:
            return self._request_approval(state, draft, reasons, fx)
        return self._send(state, fx)

    def _repair(self, state: EmailState, why: str, fx: Effects, *, backoff: bool = False) -> EmailState:
        """Send the draft back with its violations, or escalate once MAX_REPAIRS are used."""
        if state.repairs >= self.budgets.max_repairs:
            return _escalate(state, f"{why} (after {state.repairs} repairs)", fx)
        state = state.model_copy(update={"repairs": state.repairs + 1})
        if backoff:
            return retry_later(state, Step.DRAFT_REPLY, self.budgets.backoff(state.repairs), fx)
        return self._issue(state, Step.DRAFT_REPLY, fx)

    def _on_failed(self, state: EmailState, step: Step, event: StepFailed, fx: Effects) -> EmailState:
        p = event.payload
        if p.uncertain:
            return _escalate(state, SEND_UNCERTAIN if step is Step.SEND_EMAIL else f"{step} uncertain", fx)
        if step is Step.DRAFT_REPLY:
            # A draft the model could not produce (e.g. schema-violating output) is repaired like a bad one.
            state = state.model_copy(update={"violations": list(p.errors) or [p.reason]})
            return self._repair(state, f"{step} failed: {p.reason}", fx, backoff=p.retryable)
        retried = spend_retry(state, step, self.budgets.max_retries[step]) if p.retryable else None
        if retried is None:
            return _escalate(state, f"{step} failed: {p.reason}", fx)
        return retry_later(retried, step, self.budgets.backoff(retried.retries[step]), fx)

    # ------------------------------------------------------------ approval

    def _approval_reasons(self, state: EmailState, draft: Draft) -> list[str]:
        """Why a human must approve this reply: deterministic rules over what will be sent, and the claims.

        The model's claims can only add reasons, never remove one: the text itself is checked.
        """
        assert state.classification is not None
        reasons = []
        if state.classification.intent in REFUND_INTENTS:
            reasons.append(f"refund intent ({state.classification.intent})")
        if state.classification.risk not in UNRISKY:
            reasons.append(f"{state.classification.risk[:40]} risk")
        if draft.refund_cents > 0:
            reasons.append(f"offers a refund of {draft.refund_cents} cents")
        if draft.promises:
            reasons.append(f"makes promises: {', '.join(p[:40] for p in draft.promises[:5])}")
        money = money_in_text(reply_subject(state.email.subject), draft.body)
        if money is not None:
            reasons.append(f"the reply mentions money, a refund or a commitment ({money})")
        if state.money_repair:
            reasons.append("a draft was repaired for a money or promise violation")
        return reasons

    def _request_approval(
        self, state: EmailState, draft: Draft, reasons: list[str], fx: Effects
    ) -> EmailState:
        assert state.classification is not None and state.policy is not None
        attempt = state.attempts[Step.DRAFT_REPLY]  # one approval per accepted draft
        cid = state.correlation_id
        requested_at = fx.now
        approval = Approval(
            approval_id=derive_id(cid, "approval", attempt),
            draft_hash=draft_hash(draft),
            policy_version=state.policy.version,
            reasons=reasons,
            requested_at=requested_at,
            deadline=requested_at + self.budgets.approval_timeout,
        )
        fx.publish.append(
            ApprovalRequested(
                **fx.envelope(derive_id(cid, "ApprovalRequested", approval.approval_id)),
                payload=approval_payload(
                    approval_id=approval.approval_id,
                    policy_version=approval.policy_version,
                    email=state.email,
                    intent=state.classification.intent,
                    risk=state.classification.risk,
                    order=state.order,
                    draft=draft,
                    findings=list(state.violations),
                    reasons=reasons,
                    requested_at=approval.requested_at,
                    deadline=approval.deadline,
                ),
            )
        )
        state = state.model_copy(
            update={"approval": approval, "status": Status.WAITING_FOR_APPROVAL, "stage": "awaiting_approval"}
        )
        return await_deadline(
            state,
            "approval-deadline",
            attempt,
            approval.deadline,
            fx,
            reminder_name="approval-reminder",
            every=self.budgets.approval_reminder,
        )

    def _on_approval(self, state: EmailState, event: ApprovalDecided, now: datetime) -> Decision[EmailState]:
        """Apply a (signature-checked) decision, or reject it and leave the state untouched."""
        p = event.payload
        approval = state.approval

        def refuse(reason: str) -> Decision[EmailState]:
            return Decision(state, rejection=reason)

        if approval is None:
            if state.terminal:
                return refuse(f"late: process is already {state.status}")
            return refuse("not waiting for approval: no approval was requested")
        if p.approval_id != approval.approval_id:
            return refuse(f"unknown approval_id {p.approval_id} (pending: {approval.approval_id})")
        if approval.decision is not None:
            return refuse(f"duplicate: approval already decided ({approval.decision} by {approval.reviewer})")
        if state.terminal:
            return refuse(f"late: process is already {state.status}")
        if state.status != Status.WAITING_FOR_APPROVAL:
            return refuse("not waiting for approval")
        if p.decided_at > approval.deadline:
            return refuse(
                f"expired: decided at {p.decided_at.isoformat()}, deadline {approval.deadline.isoformat()}"
            )
        if p.draft_hash != approval.draft_hash:
            return refuse("draft hash mismatch: the decision is for another version of the draft")
        if p.policy_version != approval.policy_version:
            return refuse(f"policy version mismatch: {p.policy_version} != {approval.policy_version}")

        draft, order, policy = state.draft, state.order, state.policy
        assert draft is not None and order is not None and policy is not None
        if p.decision == "edit":
            if not p.edited_body:
                return refuse("edit without an edited body")
            # The reviewer's text with the claims the reviewer signed (else the draft's); the same guard
            # holds every amount in the text to the declared refund, so an edit cannot slip in money.
            try:
                draft = edited_draft(draft, p.edited_body, p.edited_fields)
            except ValueError as exc:
                return refuse(f"edit refused: {exc}")
            violations = review_draft(draft, order=order, policy=policy, email=state.email).violations
            if violations:
                return refuse(f"edited reply fails the guard: {'; '.join(violations)}")
        fx = Effects(event, now)
        decided = approval.model_copy(
            update={"decision": p.decision, "reviewer": p.reviewer, "decided_at": p.decided_at}
        )
        after = state.model_copy(update={"approval": decided})
        if p.decision == "reject":
            reason = f"rejected by {p.reviewer}: {p.reason or 'no reason given'}"
            return fx.decision(finish(after, Status.REJECTED, reason, fx, stage="done"))
        after = after.model_copy(update={"draft": draft, "status": Status.RUNNING})
        after = cancel_timers(after, fx, names=("approval-deadline", "approval-reminder"))
        return fx.decision(self._send(after, fx))

    # ------------------------------------------------------------ timers

    def _on_timer(self, state: EmailState, event: TimerFired, fx: Effects) -> EmailState:
        p = event.payload
        live = take_timer(state, p.timer_id, p.name)
        if live is None:
            return state  # stale: cancelled, superseded, or its step already answered
        state = live
        kind, step_name = parse_timer(p.name)
        if kind == TIMEOUT:
            return self._on_timeout(state, Step(step_name), fx)
        if kind == RETRY:
            return self._issue(state, Step(step_name), fx)
        if kind == "approval-reminder":
            return self._remind(state, p.due_at, fx)
        if kind == "approval-deadline":
            assert state.approval is not None
            return _escalate(state, f"no approval decision by {state.approval.deadline.isoformat()}", fx)
        raise ValueError(f"unknown timer {p.name!r}")  # a bug: only this file schedules timers

    def _on_timeout(self, state: EmailState, step: Step, fx: Effects) -> EmailState:
        state = timed_out(state, step)
        if step is Step.SEND_EMAIL:
            # Resending could send twice: only a human can tell whether the first one went out.
            return _escalate(state, f"{step} timed out: {SEND_UNCERTAIN}", fx)
        retried = spend_retry(state, step, self.budgets.max_retries[step])
        if retried is None:
            return _escalate(state, f"{step} timed out after {state.attempts[step]} attempts", fx)
        return self._issue(retried, step, fx)

    def _remind(self, state: EmailState, due_at: datetime, fx: Effects) -> EmailState:
        approval = state.approval
        assert approval is not None
        n = approval.reminders + 1
        fx.publish.append(
            ApprovalReminder(
                **fx.envelope(derive_id(state.correlation_id, "ApprovalReminder", approval.approval_id, n)),
                payload=ApprovalReminderPayload(
                    approval_id=approval.approval_id,
                    requested_at=approval.requested_at,
                    deadline=approval.deadline,
                    reminder=n,
                ),
            )
        )
        state = state.model_copy(update={"approval": approval.model_copy(update={"reminders": n})})
        next_due = due_at + self.budgets.approval_reminder
        return set_reminder(state, "approval-reminder", n + 1, next_due, approval.deadline, fx)

    # ------------------------------------------------------------ commands

    def _issue(self, state: EmailState, step: Step, fx: Effects) -> EmailState:
        """Issue the next attempt of `step` (its command built from the state) with its timeout timer."""

        def build(cmd_id: str, attempt: int) -> Event:
            return _command(state, step, cmd_id, attempt, fx)

        return issue(state, step, build, self.budgets.step_timeouts[step], fx)

    def _send(self, state: EmailState, fx: Effects) -> EmailState:
        return self._issue(state.model_copy(update={"stage": "sending"}), Step.SEND_EMAIL, fx)


def _command(state: EmailState, step: Step, cmd_id: str, attempt: int, fx: Effects) -> Event:
    env = fx.envelope(cmd_id)
    if step is Step.CLASSIFY:
        return ClassifyEmail(
            **env, payload=ClassifyEmailPayload(command_id=cmd_id, attempt=attempt, email=state.email)
        )
    if step is Step.FETCH_ORDER:
        assert state.order_id is not None
        return FetchOrder(
            **env, payload=FetchOrderPayload(command_id=cmd_id, attempt=attempt, order_id=state.order_id)
        )
    assert state.classification is not None
    if step is Step.FETCH_REFUND_POLICY:
        return FetchRefundPolicy(
            **env,
            payload=FetchRefundPolicyPayload(
                command_id=cmd_id, attempt=attempt, category=state.classification.intent
            ),
        )
    if step is Step.DRAFT_REPLY:
        assert state.policy is not None
        return DraftReply(
            **env,
            payload=DraftReplyPayload(
                command_id=cmd_id,
                attempt=attempt,
                email=state.email,
                intent=state.classification.intent,
                order=state.order,
                policy=state.policy,
                violations=list(state.violations),
                previous_draft=state.draft if state.violations else None,
            ),
        )
    assert state.draft is not None
    return SendEmail(
        **env,
        payload=SendEmailPayload(
            command_id=cmd_id,
            attempt=attempt,
            to=parse_address(state.email.sender, field="sender"),  # the one parsed address, checked at start
            subject=reply_subject(state.email.subject),
            body=state.draft.body,
            in_reply_to=state.email.message_id,
        ),
    )


def _result_step(event: Event) -> Step | None:
    if isinstance(event, StepFailed):
        try:
            return Step(event.payload.step)
        except ValueError:
            return None
    return _RESULT_STEP.get(type(event))


def _escalate(state: EmailState, reason: str, fx: Effects) -> EmailState:
    """`escalate`, with this process's terminal stage (`finish` callers pass it too)."""
    return escalate(state, reason, fx, stage="done")


CUSTOMER_EMAIL = CustomerEmailProcess()
