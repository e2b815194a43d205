"""The customer-email app's events: the upstream e-mail, its five steps' commands and results.

Built on pm's public event API (`Event`, `Command`, `Result`, `Model`, `event_type`): any team's
app defines its events the same way. Schemas: `schemas/` (`pm schemas generate`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from pm.events import (
    Command,
    CommandPayload,
    Event,
    LlmCall,
    Model,
    Result,
    ResultPayload,
    Timestamp,
    event_type,
)

__all__ = [
    "STEPS",
    "MAX_CENTS",
    "Step",
    "CLOSED_ORDER_STATUSES",
    "Email",
    "ConversationMessage",
    "Order",
    "RefundPolicy",
    "Draft",
    "EmailReceivedPayload",
    "EmailReceived",
    "ClassifyEmailPayload",
    "FetchOrderPayload",
    "FetchRefundPolicyPayload",
    "DraftReplyPayload",
    "SendEmailPayload",
    "ClassifyEmail",
    "FetchOrder",
    "FetchRefundPolicy",
    "DraftReply",
    "SendEmail",
    "EmailClassifiedPayload",
    "OrderFetchedPayload",
    "RefundPolicyFetchedPayload",
    "ReplyDraftedPayload",
    "EmailSentPayload",
    "EmailClassified",
    "OrderFetched",
    "RefundPolicyFetched",
    "ReplyDrafted",
    "EmailSent",
]

# Money amounts a model may claim are bounded well inside Avro's long, so absurd values fail validation.
MAX_CENTS = 10**12

class Step(StrEnum):
    CLASSIFY = "classify"
    FETCH_ORDER = "fetch-order"
    FETCH_REFUND_POLICY = "fetch-refund-policy"
    DRAFT_REPLY = "draft-reply"
    SEND_EMAIL = "send-email"


STEPS: tuple[str, ...] = tuple(s.value for s in Step)

class Email(Model):
    """The customer's e-mail as the process sees it."""

    message_id: str = Field(min_length=1)
    thread_id: str | None = None
    sender: str = Field(min_length=3)
    recipient: str = Field(min_length=3)
    subject: str
    body: str
    received_at: Timestamp
    order_id: str | None = None
    # Schema v2 (the evolution example): upstream tags; v1 records read with the default [].
    labels: list[str] = Field(default_factory=list)


class ConversationMessage(Model):
    """One message of the conversation (the thread): the customer's e-mails and the replies sent."""

    role: Literal["customer", "support"]
    message_id: str
    sender: str  # the parsed address (the customer's; for a reply, the address the customer wrote to)
    subject: str
    received_at: Timestamp  # when the e-mail was received, or the reply sent
    excerpt: str  # the body, bounded (`customer_email.conversation.HISTORY_EXCERPT_BYTES`)
    truncated: bool = False
    episode: int = 1  # the episode of the process it belongs to (a reply) or opened / joined (an e-mail)


# An order in one of these states is over: a customer asking about "my order" means another one.
CLOSED_ORDER_STATUSES = frozenset({"delivered", "cancelled", "canceled", "refunded", "returned", "closed"})


class Order(Model):
    order_id: str
    customer_email: str
    customer_name: str
    carrier: str
    status: str  # e.g. processing, shipped, delivered, lost
    shipped_at: Timestamp | None = None
    expected_delivery: Timestamp | None = None
    total_cents: int
    shipping_cost_cents: int
    currency: str = "USD"

    def is_open(self) -> bool:
        """Not delivered, cancelled, refunded, returned or closed: what "my order" can mean."""
        return self.status.strip().lower() not in CLOSED_ORDER_STATUSES


class RefundPolicy(Model):
    """A versioned refund policy for one intent category."""

    category: str
    version: str
    refund_shipping: bool  # shipping cost may be refunded
    max_refund_cents: int  # absolute cap per order
    max_refund_ratio: float  # cap as a fraction of the order total
    allowed_promises: list[str]  # promise codes a reply may make (e.g. "refund_shipping", "reship")
    summary: str


class Draft(Model):
    """A reply draft: the text plus the structured claims the guard checks."""

    subject: str
    body: str
    order_id: str | None = None  # the order the reply quotes
    refund_cents: int = Field(
        default=0, ge=0, le=MAX_CENTS
    )  # refund the reply offers (model output: bound it)
    promises: list[str] = Field(default_factory=list)  # promise codes the reply makes


class EmailReceivedPayload(Email):
    pass


@event_type
class EmailReceived(Event):
    TYPE = "EmailReceived"
    SCHEMA_VERSION = 2  # Email gained `labels` (schemas/v1/ keeps version 1)
    TOPIC = "email.received"
    payload: EmailReceivedPayload


class ClassifyEmailPayload(CommandPayload):
    # The e-mail with its body cut to an excerpt (`customer_email.conversation.BODY_EXCERPT_BYTES`: a
    # model uses no more, and a command must fit in a record beside the journal entry embedding the
    # input); `body_truncated` says it was cut, `body_bytes` how large (UTF-8) the whole body was.
    email: Email
    body_truncated: bool = False
    body_bytes: int | None = None
    # Earlier messages of the conversation, oldest first (bounded excerpts): context, not the question.
    history: list[ConversationMessage] = Field(default_factory=list)


class FetchOrderPayload(CommandPayload):
    order_id: str | None = None  # the order asked about; None: look up `customer`'s open orders
    customer: str | None = None  # the parsed sender address whose open orders to look up


class FetchRefundPolicyPayload(CommandPayload):
    category: str  # intent category the policy is for


class DraftReplyPayload(CommandPayload):
    email: Email  # its body an excerpt, as in `ClassifyEmailPayload`
    body_truncated: bool = False
    body_bytes: int | None = None
    intent: str
    order: Order | None
    policy: RefundPolicy
    violations: list[str] = Field(default_factory=list)  # guard findings on the previous draft (repair)
    previous_draft: Draft | None = None
    history: list[ConversationMessage] = Field(default_factory=list)  # earlier messages, oldest first
    # No order named and several open orders of the sender: the reply asks which one (these IDs only).
    candidate_orders: list[str] = Field(default_factory=list)


class SendEmailPayload(CommandPayload):
    to: str
    subject: str
    body: str
    in_reply_to: str | None = None


@event_type
class ClassifyEmail(Command):
    TYPE = "ClassifyEmail"
    # 2: Email gained `labels` (schemas/v1/); 3: the body excerpt fields and `history` (schemas/v2/)
    SCHEMA_VERSION = 3
    STEP = Step.CLASSIFY
    payload: ClassifyEmailPayload


@event_type
class FetchOrder(Command):
    TYPE = "FetchOrder"
    SCHEMA_VERSION = 2  # `order_id` optional, `customer` (schemas/v1/ keeps version 1)
    STEP = Step.FETCH_ORDER
    payload: FetchOrderPayload


@event_type
class FetchRefundPolicy(Command):
    TYPE = "FetchRefundPolicy"
    STEP = Step.FETCH_REFUND_POLICY
    payload: FetchRefundPolicyPayload


@event_type
class DraftReply(Command):
    TYPE = "DraftReply"
    # 2: Email gained `labels` (schemas/v1/); 3: excerpt fields, `history`, `candidate_orders` (schemas/v2/)
    SCHEMA_VERSION = 3
    STEP = Step.DRAFT_REPLY
    payload: DraftReplyPayload


@event_type
class SendEmail(Command):
    TYPE = "SendEmail"
    STEP = Step.SEND_EMAIL
    payload: SendEmailPayload


class EmailClassifiedPayload(ResultPayload):
    intent: str  # refund_request, delivery_status, complaint, other
    risk: Literal["low", "medium", "high"]
    order_id: str | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    llm: LlmCall


class OrderFetchedPayload(ResultPayload):
    order_id: str | None = None  # the order asked for (None for a lookup by customer)
    found: bool
    order: Order | None = None
    customer: str | None = None  # the address looked up (a FetchOrder by customer)
    orders: list[Order] = Field(default_factory=list)  # that customer's open orders (bounded)


class RefundPolicyFetchedPayload(ResultPayload):
    policy: RefundPolicy


class ReplyDraftedPayload(ResultPayload):
    draft: Draft
    llm: LlmCall


class EmailSentPayload(ResultPayload):
    to: str
    message_id: str  # RFC 5322 Message-ID, derived from the command ID
    smtp_response: str


@event_type
class EmailClassified(Result):
    TYPE = "EmailClassified"
    payload: EmailClassifiedPayload


@event_type
class OrderFetched(Result):
    TYPE = "OrderFetched"
    SCHEMA_VERSION = 2  # `order_id` optional, `customer`, `orders` (schemas/v1/ keeps version 1)
    payload: OrderFetchedPayload


@event_type
class RefundPolicyFetched(Result):
    TYPE = "RefundPolicyFetched"
    payload: RefundPolicyFetchedPayload


@event_type
class ReplyDrafted(Result):
    TYPE = "ReplyDrafted"
    payload: ReplyDraftedPayload


@event_type
class EmailSent(Result):
    TYPE = "EmailSent"
    payload: EmailSentPayload


