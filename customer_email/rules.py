"""The customer-service e-mail: the reference process, all of its rules in one file.

Read top to bottom: budgets and timeouts, the state, then `decide`, one handler per input.

    EmailReceived      -> ClassifyEmail
    EmailClassified    -> FetchOrder + FetchRefundPolicy together (fan out); without an order ID,
                          FetchOrder looks up the sender's open orders: one is used as if named,
                          several get a reply asking which one, none escalates
    both fetched       -> DraftReply (fan in, either order)
    ReplyDrafted       -> guard: fails -> DraftReply again with the violations (MAX_REPAIRS), then escalate
                          passes -> approval needed? ApprovalRequested, wait : SendEmail
    ApprovalDecided    -> approve: SendEmail | reject: rejected | edit: guard, then SendEmail
    EmailSent          -> sent

A conversation is one process (the correlation ID is the thread ID): a follow-up e-mail from the
same sender joins it. While the process runs, the follow-up restarts the episode's work from
classify with the new message (a pending approval is superseded, a new draft gets a new approval);
while the reply is being sent, it waits for the send to end; after the process ended (sent,
escalated, rejected, failed), it opens a new episode: status running again, the conversation so
far as context, every rule and approval applied afresh. Command, approval and timer IDs keep
counting across episodes, so nothing of an old episode answers or approves a new one.

Escalation (terminal `escalated`, a human takes over) is the answer to everything the rules
do not cover: unknown intent, no open order of the sender, order not found, a step that fails for good or
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
from typing import Any, Literal

from pydantic import Field

from customer_email.addresses import AddressError, parse_address, same_address
from customer_email.approval_request import approval_payload, edited_draft
from customer_email.conversation import (
    MAX_SEEN_MESSAGES,
    customer_message,
    excerpt,
    message_digest,
    remember,
    support_message,
)
from customer_email.events import (
    ClassifyEmail,
    ClassifyEmailPayload,
    ConversationMessage,
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
from customer_email.guard import (
    GuardVerdict,
    draft_hash,
    money_in_text,
    order_belongs_to,
    review_draft,
    review_question,
)
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
    "SUPERSEDED",
    "MAX_CANDIDATE_ORDERS",
    "MAX_ORDER_ID_CHARS",
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
    "admission_problem",
    "upcast_v1",
]

NAME = "customer-email"
# 2: conversations (episode, conversation, next_email, seen_messages), the order lookup by sender
# (candidates) and the e-mail kept as a bounded excerpt; `upcast_v1` reads version-1 states.
VERSION = 2

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
MAX_ORDER_ID_CHARS = 100  # an order ID (the e-mail's, the model's) longer than this is not one
# No order named: the sender's open orders are looked up; with more than this many, a human answers.
MAX_CANDIDATE_ORDERS = 10
SUPERSEDED = "superseded"  # the decision of an approval a follow-up e-mail made moot

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
    # Version 2. `email.body` is an excerpt (`customer_email.conversation.excerpt`): the whole body's
    # size (UTF-8 bytes) when it was cut, else None. The whole e-mail stays in the journal.
    body_bytes: int | None = None
    # No order named: the sender's open orders the reply asks about (each checked to be theirs).
    candidates: list[str] = Field(default_factory=list)
    episode: int = 1  # a follow-up after the end opens the next one
    # The thread so far, oldest first, bounded (`customer_email.conversation`): the customer's e-mails
    # and the replies sent. `email` is the one this episode answers (its latest message).
    conversation: list[ConversationMessage] = Field(default_factory=list)
    next_email: Email | None = None  # a follow-up that came while the reply was being sent: the next episode
    next_body_bytes: int | None = None  # its whole body's size, when its body is an excerpt
    seen_messages: list[str] = Field(default_factory=list)  # digests of the message IDs received (bounded)
    approvals_requested: int = 0  # in the whole conversation: each approval's timers get their own IDs
    last_order_id: str | None = None  # the order the conversation was last about (checked to be the sender's)
    sent_message_id: str | None = None  # (last: `pm inspect` and `pm replay` end with it)


# ---------------------------------------------------------------- IDs and helpers


def timeout_timer(correlation_id: str, step: Step, attempt: int) -> str:
    return timer_id(correlation_id, timer_name(TIMEOUT, step), attempt)


def retry_timer(correlation_id: str, step: Step, attempt: int) -> str:
    """The backoff timer that issues `attempt` of `step` when it fires."""
    return timer_id(correlation_id, timer_name(RETRY, step), attempt)


def reply_subject(subject: str) -> str:
    return subject if subject[:3].lower() == "re:" else f"Re: {subject}"


def _has_control(value: str) -> bool:
    return any(ch < " " or ch == "\x7f" for ch in value)


def _order_id_or_none(value: str | None) -> str | None:
    """An order ID fit for a lookup and a reply; None for none, or for one no order ID looks like."""
    if not value or len(value) > MAX_ORDER_ID_CHARS or _has_control(value):
        return None
    return value


def _address_or(value: str) -> str:
    """The parsed address, or the value as it is (a journal of an older build may hold one that does not parse)."""
    try:
        return parse_address(value)
    except AddressError:
        return value[:MAX_HEADER_CHARS]


def admission_problem(event: EmailReceived) -> str | None:
    """Why this e-mail must not open a process nor join one (hostile or malformed), or None."""
    email = event.payload
    # The thread (or, without one, the message) is the process: anything else splits or hijacks one.
    if event.correlation_id not in (email.thread_id, email.message_id):
        return (
            f"correlation ID {shown(event.correlation_id)} is neither the e-mail's thread ID "
            "nor its message ID"
        )
    # These become reply headers (In-Reply-To, Subject): refuse injection here, not at send time.
    for name, value in (("message_id", email.message_id), ("thread_id", email.thread_id or ""),
                        ("subject", email.subject)):  # fmt: skip
        if len(value) > MAX_HEADER_CHARS or _has_control(value):
            return f"{name} {shown(value)} has control characters or is over {MAX_HEADER_CHARS}"
    if email.order_id is not None and _order_id_or_none(email.order_id) is None:
        return f"order_id {shown(email.order_id)} is empty, has control characters or is over {MAX_ORDER_ID_CHARS}"
    # The reply goes to the one parsed sender address; an e-mail without one never starts a process.
    try:
        parse_address(email.sender, field="sender")
        parse_address(email.recipient, field="recipient")
    except AddressError as exc:
        return str(exc)
    return None


def _reminder_name(number: int) -> str:
    """The reminder timer of the conversation's `number`th approval (timer IDs derive from the name)."""
    return "approval-reminder" if number == 1 else f"approval-reminder:{number}"


# What a new episode, or a follow-up that restarts one, starts from (the conversation, the attempt
# counters, the approval count and a money repair carry over).
_FRESH: Mapping[str, object] = {
    "stage": "received",
    "classification": None,
    "order_id": None,
    "order": None,
    "candidates": [],
    "policy": None,
    "draft": None,
    "violations": [],
    "repairs": 0,
    "retries": {},
    "pending": {},
    "next_email": None,
    "next_body_bytes": None,
}


def upcast_v1(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A version-1 state (one e-mail, kept whole) as version 2: the e-mail as an excerpt, the conversation."""
    state = dict(data)
    email, size = excerpt(Email.model_validate(state["email"]))
    state["email"] = email.model_dump(mode="json")
    state["body_bytes"] = size
    first = customer_message(email, _address_or(email.sender), 1, cut=size is not None)
    state["conversation"] = [first.model_dump(mode="json")]
    state["seen_messages"] = [message_digest(email.message_id)]
    state["approvals_requested"] = 1 if state.get("approval") else 0
    return state


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
    upcasters: Mapping[int, Upcaster] = {1: upcast_v1}

    def __init__(self, budgets: Budgets | None = None) -> None:
        self.budgets = budgets or Budgets()

    def starts(self, event: Event) -> bool:
        return isinstance(event, EmailReceived)

    def admit(self, event: Event) -> None:
        """Refuse a hostile or malformed start event (`InvalidInput`: the runtime dead-letters it).

        Called on live input only: a journal folded later holds what an older build admitted, and
        must rebuild as it was decided. The runtime calls it for a follow-up in the thread too (a
        start-type input of a process that exists); `decide` checks a follow-up again, so a journal
        of an older build that did not still refuses what it must.
        """
        if not isinstance(event, EmailReceived):
            raise InvalidInput(f"a {event.type} does not start {NAME}")
        problem = admission_problem(event)
        if problem is not None:
            raise InvalidInput(problem)

    def initial_state(self, event: Event) -> EmailState:
        if not isinstance(event, EmailReceived):
            raise InvalidInput(f"a {event.type} does not start {NAME}")
        email, size = excerpt(event.payload)
        return EmailState(correlation_id=event.correlation_id, email=email, body_bytes=size)

    def decide(self, state: EmailState, event: Event, now: datetime) -> Decision[EmailState]:
        if isinstance(event, ApprovalDecided):
            return self._on_approval(state, event, now)
        if isinstance(event, EmailReceived):
            return self._on_email(state, event, now)
        if state.terminal:
            return Decision(state)  # late results, stale timers, anything: the process is over
        fx = Effects(event, now)
        if isinstance(event, TimerFired):
            return fx.decision(self._after(self._on_timer(state, event, fx), fx))
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
            state = self._on_sent(state, event, fx)
        return fx.decision(self._after(state, fx))

    # ------------------------------------------------------------ the conversation

    def _on_email(self, state: EmailState, event: EmailReceived, now: datetime) -> Decision[EmailState]:
        """The e-mail that opened the process, or a follow-up in its thread."""
        fx = Effects(event, now)
        if (
            not state.conversation
            and state.stage == "received"
            and event.payload.message_id == state.email.message_id
        ):
            state = self._remember(state, state.email, state.body_bytes, state.episode)
            state = self._issue(state, Step.CLASSIFY, fx)
            return fx.decision(state.model_copy(update={"stage": "classifying"}))
        problem = self._follow_up_problem(state, event)
        if problem is not None:
            return Decision(state, rejection=problem)
        email, size = excerpt(event.payload)
        if not state.terminal and state.stage == "sending":
            # The reply is going out (or may have): answer the follow-up in the next episode, once it ended.
            state = self._remember(state, email, size, state.episode + 1)
            return fx.decision(state.model_copy(update={"next_email": email, "next_body_bytes": size}))
        if not state.terminal:
            return fx.decision(
                self._restart(self._remember(state, email, size, state.episode), email, size, fx)
            )
        state = self._remember(state, email, size, state.episode + 1)
        return fx.decision(self._open_episode(state, email, size, fx))

    def _follow_up_problem(self, state: EmailState, event: EmailReceived) -> str | None:
        """Why a follow-up may not join this conversation: the start checks, the sender, a repeat."""
        p = event.payload
        problem = admission_problem(event)
        if problem is not None:
            return f"follow-up refused: {problem}"
        if message_digest(p.message_id) in state.seen_messages or p.message_id == state.email.message_id:
            return f"e-mail {shown(p.message_id)} already received for this process"
        # Anyone can write into a thread ID: only the conversation's sender joins it (the reply goes
        # there anyway, to the parsed address; a spoofed From is upstream's to catch).
        if not same_address(p.sender, state.email.sender):
            return (
                f"follow-up refused: sender {shown(p.sender)} is not the conversation's sender "
                f"{_address_or(state.email.sender)}"
            )
        return None

    def _remember(self, state: EmailState, email: Email, size: int | None, episode: int) -> EmailState:
        message = customer_message(email, _address_or(email.sender), episode, cut=size is not None)
        return state.model_copy(
            update={
                "conversation": remember(state.conversation, message),
                "seen_messages": [*state.seen_messages, message_digest(email.message_id)][
                    -MAX_SEEN_MESSAGES:
                ],
            }
        )

    def _restart(self, state: EmailState, email: Email, size: int | None, fx: Effects) -> EmailState:
        """A follow-up while the process runs: the episode's work starts again from classify, with it.

        Every pending step and timer is dropped (late answers are ignored: nothing is pending); a
        pending approval is superseded (its decision is refused), the draft is made anew and, if the
        rules say so, approved anew under a new approval ID.
        """
        state = cancel_timers(state, fx)
        approval = state.approval
        if approval is not None and approval.decision is None:
            approval = approval.model_copy(update={"decision": SUPERSEDED})
        state = state.model_copy(
            update={
                **_FRESH,
                "email": email,
                "body_bytes": size,
                "approval": approval,
                "status": Status.RUNNING,
            }
        )
        return self._issue(state, Step.CLASSIFY, fx).model_copy(update={"stage": "classifying"})

    def _open_episode(self, state: EmailState, email: Email, size: int | None, fx: Effects) -> EmailState:
        """A follow-up after the end: the next episode, the conversation so far as its context.

        A terminal process has no timers left (the runtime drops them), and nothing of the old episode
        carries over but the conversation, the counters (IDs stay unique) and a money repair.
        """
        state = state.model_copy(
            update={
                **_FRESH,
                "email": email,
                "body_bytes": size,
                "approval": None,
                "status": Status.RUNNING,
                "reason": None,
                "sent_message_id": None,
                "timers": {},
                "episode": state.episode + 1,
            }
        )
        return self._issue(state, Step.CLASSIFY, fx).model_copy(update={"stage": "classifying"})

    def _after(self, state: EmailState, fx: Effects) -> EmailState:
        """An episode that just ended with a follow-up waiting: the next episode starts now."""
        if state.terminal and state.next_email is not None:
            return self._open_episode(state, state.next_email, state.next_body_bytes, fx)
        return state

    def _on_sent(self, state: EmailState, event: EmailSent, fx: Effects) -> EmailState:
        sent = event.payload.message_id
        state = finish(state, SENT, None, fx, stage="done", sent_message_id=sent)
        if state.draft is None:
            return state
        reply = support_message(
            sent,
            _address_or(state.email.recipient),
            reply_subject(state.email.subject),
            state.draft.body,
            fx.now,
            state.episode,
        )
        return state.model_copy(
            update={
                "conversation": remember(state.conversation, reply),
                "seen_messages": [*state.seen_messages, message_digest(sent)][-MAX_SEEN_MESSAGES:],
            }
        )

    # ------------------------------------------------------------ step results

    def _on_classified(self, state: EmailState, event: EmailClassified, fx: Effects) -> EmailState:
        p = event.payload
        found = _order_id_or_none(p.order_id)  # model output: an "order ID" no order ID looks like is none
        update: dict[str, Any] = {
            "classification": Classification(intent=p.intent, risk=p.risk, order_id=found, confidence=p.confidence),
            # The e-mail's structured order_id (set upstream) beats the model's extraction; a
            # follow-up naming none is about the conversation's order.
            "order_id": state.email.order_id or found or state.last_order_id,
        }
        if p.intent not in KNOWN_INTENTS:
            state = state.model_copy(update=update)
            return _escalate(state, f"intent {shown(p.intent)} is not handled automatically", fx)
        state = state.model_copy(update={**update, "stage": "fetching"})
        # Without an order ID, fetch-order looks up the sender's open orders (see `_on_orders`).
        state = self._issue(state, Step.FETCH_ORDER, fx)
        return self._issue(state, Step.FETCH_REFUND_POLICY, fx)

    def _on_order(self, state: EmailState, event: OrderFetched, fx: Effects) -> EmailState:
        p = event.payload
        if state.order_id is None:  # the command looked up the sender's orders (whatever the answer claims)
            return self._on_orders(state, p.orders, fx)
        if not p.found or p.order is None:
            return _escalate(state, f"order {state.order_id} not found", fx)
        if not order_belongs_to(p.order, state.email):
            # A mistyped or hallucinated order ID must not put someone else's order in the reply.
            return _escalate(state, f"order {state.order_id} belongs to another customer", fx)
        return self._maybe_draft(
            state.model_copy(update={"order": p.order, "last_order_id": state.order_id}), fx
        )

    def _on_orders(self, state: EmailState, orders: list[Order], fx: Effects) -> EmailState:
        """No order named: the sender's open orders. One is used as if named; several, the reply asks.

        Only orders of the parsed sender count, whatever the service returned: a reply never names
        another customer's order (and the guard refuses any order ID but these in its text).
        """
        mine: dict[str, Order] = {}
        for order in orders:
            if order.is_open() and order_belongs_to(order, state.email) and _order_id_or_none(order.order_id):
                mine.setdefault(order.order_id, order)
        if not mine:
            return _escalate(state, "no order ID in the e-mail, and the sender has no open order", fx)
        if len(mine) > MAX_CANDIDATE_ORDERS:
            return _escalate(
                state, f"no order ID in the e-mail, and the sender has {len(mine)} open orders", fx
            )
        if len(mine) == 1:
            (order,) = mine.values()
            update = {"order_id": order.order_id, "order": order, "last_order_id": order.order_id}
            return self._maybe_draft(state.model_copy(update=update), fx)
        return self._maybe_draft(state.model_copy(update={"candidates": list(mine)}), fx)

    def _on_policy(self, state: EmailState, event: RefundPolicyFetched, fx: Effects) -> EmailState:
        return self._maybe_draft(state.model_copy(update={"policy": event.payload.policy}), fx)

    def _maybe_draft(self, state: EmailState, fx: Effects) -> EmailState:
        """Fan in: draft once the order (or the open orders to ask about) and the policy are in."""
        if not all_in(state.order or state.candidates or None, state.policy):
            return state
        return self._issue(state.model_copy(update={"stage": "drafting"}), Step.DRAFT_REPLY, fx)

    def _review(self, state: EmailState, draft: Draft) -> GuardVerdict:
        """The guard on a draft: against the order, or (none named, several open) the orders to ask about.

        It runs on what the model was shown: the e-mail's excerpt and the conversation's excerpts (the
        words of a reply we sent do not count as the customer's when their e-mail quotes them).
        """
        history = _history(state)
        earlier = [f"{m.subject}\n{m.excerpt}" for m in history if m.role == "customer"]
        ours = [m.excerpt for m in history if m.role == "support"]  # a follow-up may quote our reply
        if state.order is not None:
            assert state.policy is not None
            return review_draft(
                draft,
                order=state.order,
                policy=state.policy,
                email=state.email,
                history=earlier,
                replies=ours,
            )
        return review_question(
            draft, candidates=state.candidates, email=state.email, history=earlier, replies=ours
        )

    def _on_draft(self, state: EmailState, draft: Draft, fx: Effects) -> EmailState:
        verdict = self._review(state, draft)
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
                    body_bytes=state.body_bytes,
                    intent=state.classification.intent,
                    risk=state.classification.risk,
                    order=state.order,
                    draft=draft,
                    findings=list(state.violations),
                    reasons=reasons,
                    requested_at=approval.requested_at,
                    deadline=approval.deadline,
                    candidates=list(state.candidates),
                    history=_history(state),
                ),
            )
        )
        number = state.approvals_requested + 1
        state = state.model_copy(
            update={
                "approval": approval,
                "status": Status.WAITING_FOR_APPROVAL,
                "stage": "awaiting_approval",
                "approvals_requested": number,
            }
        )
        return await_deadline(
            state,
            "approval-deadline",
            attempt,
            approval.deadline,
            fx,
            reminder_name=_reminder_name(number),
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
        if approval.decision == SUPERSEDED:
            return refuse(
                "superseded: a follow-up e-mail came, the reply is drafted again (and approved anew)"
            )
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

        draft = state.draft
        assert draft is not None
        if p.decision == "edit":
            if not p.edited_body:
                return refuse("edit without an edited body")
            # The reviewer's text with the claims the reviewer signed (else the draft's); the same guard
            # holds every amount in the text to the declared refund, so an edit cannot slip in money.
            try:
                draft = edited_draft(draft, p.edited_body, p.edited_fields)
            except ValueError as exc:
                return refuse(f"edit refused: {exc}")
            violations = self._review(state, draft).violations
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
        waiting = tuple(
            n
            for n in after.timers.values()
            if parse_timer(n)[0] in ("approval-deadline", "approval-reminder")
        )
        after = cancel_timers(after, fx, names=waiting)
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
            return self._remind(state, p.name, p.due_at, fx)
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
            # Attempts in this episode (the counter keeps going across episodes, for unique command IDs).
            attempts = 1 + state.retries.get(step, 0) + (state.repairs if step is Step.DRAFT_REPLY else 0)
            return _escalate(state, f"{step} timed out after {attempts} attempts", fx)
        return self._issue(retried, step, fx)

    def _remind(self, state: EmailState, name: str, due_at: datetime, fx: Effects) -> EmailState:
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
        return set_reminder(state, name, n + 1, next_due, approval.deadline, fx)

    def resume(self, state: EmailState, command: Event, now: datetime) -> Decision[EmailState]:
        """`pm resume ID`: a running process nothing moves on gets its pending steps issued again.

        Each pending step gets a new attempt (a new command ID, so the step consumer runs it; its
        ledger still refuses to send one e-mail twice) and a fresh timeout; a live timeout of the old
        attempt is cancelled, so its late answer is ignored. Nothing pending: refused (escalate it).
        """
        if state.status != Status.RUNNING:
            return Decision(state, rejection=f"only a running process can be resumed (status {state.status})")
        if not state.pending:
            return Decision(state, rejection="no step is pending, nothing to issue again: escalate it")
        fx = Effects(command, now)
        for step in list(state.pending):
            state = cancel_timers(state, fx, names=(timer_name(TIMEOUT, step),))
            state = self._issue(state, Step(step), fx)
        return fx.decision(state)

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
            **env,
            payload=ClassifyEmailPayload(
                command_id=cmd_id,
                attempt=attempt,
                email=state.email,
                body_truncated=state.body_bytes is not None,
                body_bytes=state.body_bytes,
                history=_history(state),
            ),
        )
    if step is Step.FETCH_ORDER:
        if state.order_id is None:  # none named: the sender's open orders, by the one parsed address
            lookup = FetchOrderPayload(
                command_id=cmd_id, attempt=attempt, customer=parse_address(state.email.sender, field="sender")
            )
        else:
            lookup = FetchOrderPayload(command_id=cmd_id, attempt=attempt, order_id=state.order_id)
        return FetchOrder(**env, payload=lookup)
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
                body_truncated=state.body_bytes is not None,
                body_bytes=state.body_bytes,
                intent=state.classification.intent,
                order=state.order,
                policy=state.policy,
                violations=list(state.violations),
                previous_draft=state.draft if state.violations else None,
                history=_history(state),
                candidate_orders=list(state.candidates),
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


def _history(state: EmailState) -> list[ConversationMessage]:
    """The conversation before the e-mail this episode answers (the context a step gets), oldest first."""
    current = state.email.message_id
    return [m for m in state.conversation if not (m.role == "customer" and m.message_id == current)]


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
