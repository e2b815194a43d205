"""Event and command types: the Python side of the Avro contract in `schemas/`.

Every record on every topic is one `Event`: a shared envelope (event_id,
correlation_id, causation_id, type, occurred_at, schema_version) around a typed
payload. Models are frozen; `schemas/<Type>.avsc` is the wire contract and a test
proves the two agree.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "Step",
    "STEPS",
    "Timestamp",
    "Model",
    "Event",
    "EVENT_TYPES",
    "event_type",
    "derive_id",
    "command_id",
    "utc_ms",
    # payload parts
    "Email",
    "LlmCall",
    "Order",
    "RefundPolicy",
    "Draft",
    "TimerSpec",
    "Command",
    "CommandPayload",
    "Result",
    "ResultPayload",
    # inputs from upstream
    "EmailReceived",
    "EmailReceivedPayload",
    # commands
    "ClassifyEmail",
    "ClassifyEmailPayload",
    "FetchOrder",
    "FetchOrderPayload",
    "FetchRefundPolicy",
    "FetchRefundPolicyPayload",
    "DraftReply",
    "DraftReplyPayload",
    "SendEmail",
    "SendEmailPayload",
    # step results
    "EmailClassified",
    "EmailClassifiedPayload",
    "OrderFetched",
    "OrderFetchedPayload",
    "RefundPolicyFetched",
    "RefundPolicyFetchedPayload",
    "ReplyDrafted",
    "ReplyDraftedPayload",
    "EmailSent",
    "EmailSentPayload",
    "StepFailed",
    "StepFailedPayload",
    # approvals
    "ApprovalRequested",
    "ApprovalRequestedPayload",
    "ApprovalField",
    "ApprovalDecided",
    "ApprovalDecidedPayload",
    "ApprovalReminder",
    "ApprovalReminderPayload",
    # timers
    "TimerScheduled",
    "TimerCancelled",
    "TimerFired",
    "TimerPayload",
    # journal and DLQ
    "JournalEntry",
    "JournalEntryPayload",
    "DlqRecord",
    "DlqRecordPayload",
]


def utc_ms(value: datetime) -> datetime:
    """Timestamps are UTC with millisecond precision (what Avro timestamp-millis keeps)."""
    if value.tzinfo is UTC and value.microsecond % 1000 == 0:
        return value  # already normal (decoded, derived): the common case, it runs on every model built
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=(value.microsecond // 1000) * 1000)


Timestamp = Annotated[datetime, AfterValidator(utc_ms)]

# Money amounts a model may claim are bounded well inside Avro's long, so absurd values fail validation.
MAX_CENTS = 10**12

# Namespace for every ID the PM derives (command IDs, event IDs): uuid5 keeps them deterministic.
_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-5b7e-9a51-3c2f0e6d4b19")
_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


def derive_id(*parts: object) -> str:
    """A deterministic ID from its parts; same parts, same ID, on every replay.

    Exactly `str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))` (a test holds it to that), computed
    from hashlib directly: the PM derives several IDs per decision and `uuid.uuid5` is 3x slower.
    """
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + "/".join(map(str, parts)).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def command_id(correlation_id: str, step: str, attempt: int) -> str:
    """`uuid5(correlation_id, step, attempt)`: a retried command gets a new ID, a replayed one the same."""
    return derive_id(correlation_id, step, attempt)


class Step(StrEnum):
    CLASSIFY = "classify"
    FETCH_ORDER = "fetch-order"
    FETCH_REFUND_POLICY = "fetch-refund-policy"
    DRAFT_REPLY = "draft-reply"
    SEND_EMAIL = "send-email"


STEPS: tuple[str, ...] = tuple(s.value for s in Step)


class Model(BaseModel):
    """Base of every payload and payload part: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- payload parts


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


class LlmCall(Model):
    """Everything needed to replay an LLM step without calling the model again."""

    provider: str  # "openai-compatible" or "offline"
    model: str
    prompt: str  # JSON array of chat messages, exactly as sent
    raw_output: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0


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


class TimerSpec(Model):
    timer_id: str
    name: str
    due_at: Timestamp


# ---------------------------------------------------------------- envelope


class Event(BaseModel):
    """The shared envelope. Subclasses fix `type`, the payload model and the logical topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str] = ""
    TOPIC: ClassVar[str] = ""  # logical topic; "" for journal-only events and commands (cmd.<step>)
    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    type: str = ""
    occurred_at: Timestamp
    schema_version: int = 1
    payload: Any

    def model_post_init(self, context: Any, /) -> None:
        if self.type != type(self).TYPE:
            if self.type:
                raise ValueError(f"type {self.type!r} does not match {type(self).__name__}")
            object.__setattr__(self, "type", type(self).TYPE)
        if self.schema_version != type(self).SCHEMA_VERSION:
            object.__setattr__(self, "schema_version", type(self).SCHEMA_VERSION)

    @property
    def topic(self) -> str:
        """The logical topic this event is produced to."""
        return type(self).TOPIC


EVENT_TYPES: dict[str, type[Event]] = {}

E = TypeVar("E", bound=type[Event])


def event_type(cls: E) -> E:
    """Register an event class under its TYPE (the codec and replay look types up here)."""
    if not cls.TYPE or cls.TYPE in EVENT_TYPES:
        raise ValueError(f"event type {cls.TYPE!r} is empty or registered twice")
    EVENT_TYPES[cls.TYPE] = cls
    return cls


# ---------------------------------------------------------------- upstream input


class EmailReceivedPayload(Email):
    pass


@event_type
class EmailReceived(Event):
    TYPE = "EmailReceived"
    SCHEMA_VERSION = 2  # Email gained `labels` (schemas/v1/ keeps version 1)
    TOPIC = "email.received"
    payload: EmailReceivedPayload


# ---------------------------------------------------------------- commands (PM -> cmd.<step>)


class CommandPayload(Model):
    command_id: str
    attempt: int = Field(ge=1)


class ClassifyEmailPayload(CommandPayload):
    email: Email


class FetchOrderPayload(CommandPayload):
    order_id: str


class FetchRefundPolicyPayload(CommandPayload):
    category: str  # intent category the policy is for


class DraftReplyPayload(CommandPayload):
    email: Email
    intent: str
    order: Order | None
    policy: RefundPolicy
    violations: list[str] = Field(default_factory=list)  # guard findings on the previous draft (repair)
    previous_draft: Draft | None = None


class SendEmailPayload(CommandPayload):
    to: str
    subject: str
    body: str
    in_reply_to: str | None = None


class Command(Event):
    """Base of every command (PM -> `cmd.<STEP>`): set `STEP` to the step's name and type the payload
    with a `CommandPayload` subclass (command_id, attempt)."""

    STEP: ClassVar[str]

    @property
    def topic(self) -> str:
        return f"cmd.{type(self).STEP}"


@event_type
class ClassifyEmail(Command):
    TYPE = "ClassifyEmail"
    SCHEMA_VERSION = 2  # Email gained `labels` (schemas/v1/ keeps version 1)
    STEP = Step.CLASSIFY
    payload: ClassifyEmailPayload


@event_type
class FetchOrder(Command):
    TYPE = "FetchOrder"
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
    SCHEMA_VERSION = 2  # Email gained `labels` (schemas/v1/ keeps version 1)
    STEP = Step.DRAFT_REPLY
    payload: DraftReplyPayload


@event_type
class SendEmail(Command):
    TYPE = "SendEmail"
    STEP = Step.SEND_EMAIL
    payload: SendEmailPayload


# ---------------------------------------------------------------- step results (-> step.results)


class ResultPayload(Model):
    command_id: str
    attempt: int = Field(ge=1)


class EmailClassifiedPayload(ResultPayload):
    intent: str  # refund_request, delivery_status, complaint, other
    risk: Literal["low", "medium", "high"]
    order_id: str | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    llm: LlmCall


class OrderFetchedPayload(ResultPayload):
    order_id: str
    found: bool
    order: Order | None = None


class RefundPolicyFetchedPayload(ResultPayload):
    policy: RefundPolicy


class ReplyDraftedPayload(ResultPayload):
    draft: Draft
    llm: LlmCall


class EmailSentPayload(ResultPayload):
    to: str
    message_id: str  # RFC 5322 Message-ID, derived from the command ID
    smtp_response: str


class StepFailedPayload(ResultPayload):
    step: str
    retryable: bool
    uncertain: bool = False  # side effect may or may not have happened (send-email crash): a human decides
    reason: str
    errors: list[str] = Field(default_factory=list)
    llm: LlmCall | None = None


class Result(Event):
    """Base of every step result (-> `step.results`): type the payload with a `ResultPayload` subclass."""

    TOPIC = "step.results"


@event_type
class EmailClassified(Result):
    TYPE = "EmailClassified"
    payload: EmailClassifiedPayload


@event_type
class OrderFetched(Result):
    TYPE = "OrderFetched"
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


@event_type
class StepFailed(Result):
    TYPE = "StepFailed"
    payload: StepFailedPayload


# ---------------------------------------------------------------- approvals


class ApprovalField(Model):
    """One line the reviewer sees: a label and its value."""

    label: str
    value: str


class ApprovalRequestedPayload(Model):
    """A proposal a human must approve, of any process: what, why, and what the reviewer needs to see.

    `proposal` is the canonical JSON (`pm.approvals.canonical_json`) of the app's model the process
    will act on (`proposal_type` names it); `draft_hash` is its sha256, which every decision must
    quote, so a decision binds to exactly this content. An `edit` replaces the proposal's `editable`
    field (and the fields a reviewer sets, see ApprovalDecided); the process checks the edit.
    """

    approval_id: str
    draft_hash: str  # sha256 hex of `proposal`; decisions must quote it (name kept from schema v1)
    policy_version: str  # the rules the proposal was checked against; decisions must quote it
    proposal_type: str
    proposal: str
    editable: str | None = None  # the proposal field an edit replaces (e.g. "body"); None: no edits
    title: str  # one line for lists
    display: list[ApprovalField] = Field(default_factory=list)  # the facts, in order
    context: str = "{}"  # JSON object with what else the reviewer may need (the input, looked-up data)
    findings: list[str] = Field(default_factory=list)  # what the process's checks found
    reasons: list[str]  # why a human must decide
    requested_at: Timestamp
    deadline: Timestamp


class ApprovalDecidedPayload(Model):
    approval_id: str
    decision: Literal["approve", "reject", "edit"]
    reviewer: str
    draft_hash: str
    policy_version: str
    reason: str | None = None
    edited_body: str | None = None
    # An edit's other proposal fields, as a JSON object the reviewer signs (schema v2), e.g. the claims
    # that go with the edited text; None keeps the proposal's. The process checks them with the edit.
    edited_fields: str | None = Field(default=None, max_length=20_000)
    decided_at: Timestamp
    key_id: str = ""
    signature: str = ""  # hex HMAC-SHA256 over the canonical payload with signature=""


@event_type
class ApprovalRequested(Event):
    TYPE = "ApprovalRequested"
    # 3: a generic proposal instead of the e-mail draft (v1, v2 kept under schemas/; the bundled app
    # upcasts them); 2: Email gained `labels`.
    SCHEMA_VERSION = 3
    TOPIC = "approvals.requested"
    payload: ApprovalRequestedPayload


class ApprovalReminderPayload(Model):
    approval_id: str
    requested_at: Timestamp
    deadline: Timestamp
    reminder: int = Field(ge=1)  # how many reminders so far


@event_type
class ApprovalReminder(Event):
    """Published when an approval is still pending at its reminder time."""

    TYPE = "ApprovalReminder"
    TOPIC = "approvals.requested"
    payload: ApprovalReminderPayload


@event_type
class ApprovalDecided(Event):
    TYPE = "ApprovalDecided"
    SCHEMA_VERSION = 2  # edits gained signed money claims (schemas/v1/ keeps version 1)
    TOPIC = "approvals"
    payload: ApprovalDecidedPayload


# ---------------------------------------------------------------- timers


class TimerPayload(Model):
    timer_id: str
    name: str
    due_at: Timestamp


@event_type
class TimerScheduled(Event):
    TYPE = "TimerScheduled"
    payload: TimerPayload


@event_type
class TimerCancelled(Event):
    TYPE = "TimerCancelled"
    payload: TimerPayload


@event_type
class TimerFired(Event):
    TYPE = "TimerFired"
    TOPIC = "pm.timers"
    payload: TimerPayload


# ---------------------------------------------------------------- journal and DLQ


class JournalEntryPayload(Model):
    """One journal record: an input the PM accepted, and what it decided."""

    process: str  # process definition name
    process_version: int  # the definition version this process runs on
    input_topic: str
    input_partition: int
    input_offset: int
    event: bytes  # the input event, single-object encoded (exactly as received)
    outcome: Literal["applied", "rejected", "failed"]
    reason: str | None = None  # why rejected or failed
    status: str  # process status after this entry
    commands: list[bytes] = Field(default_factory=list)  # encoded command events
    published: list[bytes] = Field(default_factory=list)  # encoded published events
    timers_scheduled: list[TimerSpec] = Field(default_factory=list)
    timers_cancelled: list[str] = Field(default_factory=list)
    # When the PM decided (the `now` decide saw); replays pass it again. None in version-1 entries,
    # which were decided with the input's occurred_at.
    decided_at: Timestamp | None = None


@event_type
class JournalEntry(Event):
    TYPE = "JournalEntry"
    TOPIC = "pm.journal"
    SCHEMA_VERSION = 2  # the payload gained `decided_at` (schemas/v1/ keeps version 1)
    payload: JournalEntryPayload


class DlqRecordPayload(Model):
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    error_type: str
    failed_by: str  # the component that gave up on it


@event_type
class DlqRecord(Event):
    TYPE = "DlqRecord"
    TOPIC = "pm.dlq"
    payload: DlqRecordPayload
