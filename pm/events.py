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
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "Timestamp",
    "Model",
    "Event",
    "EVENT_TYPES",
    "event_type",
    "derive_id",
    "command_id",
    "utc_ms",
    # payload parts
    "LlmCall",
    "TimerSpec",
    "Command",
    "CommandPayload",
    "Result",
    "ResultPayload",
    # inputs from upstream
    # commands
    # step results
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
    "OperatorCommand",
    "OperatorCommandPayload",
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


class Model(BaseModel):
    """Base of every payload and payload part: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- payload parts


class LlmCall(Model):
    """Everything needed to replay an LLM step without calling the model again."""

    provider: str  # "openai-compatible" or "offline"
    model: str
    prompt: str  # JSON array of chat messages, exactly as sent
    raw_output: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0


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


# ---------------------------------------------------------------- commands (PM -> cmd.<step>)


class CommandPayload(Model):
    command_id: str
    attempt: int = Field(ge=1)


class Command(Event):
    """Base of every command (PM -> `cmd.<STEP>`): set `STEP` to the step's name and type the payload
    with a `CommandPayload` subclass (command_id, attempt)."""

    STEP: ClassVar[str]

    @property
    def topic(self) -> str:
        return f"cmd.{type(self).STEP}"


# ---------------------------------------------------------------- step results (-> step.results)


class ResultPayload(Model):
    command_id: str
    attempt: int = Field(ge=1)


class StepFailedPayload(ResultPayload):
    step: str
    retryable: bool
    uncertain: bool = False  # side effect may or may not have happened (a crash mid side effect): a human decides
    reason: str
    errors: list[str] = Field(default_factory=list)
    llm: LlmCall | None = None


class Result(Event):
    """Base of every step result (-> `step.results`): type the payload with a `ResultPayload` subclass."""

    TOPIC = "step.results"


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
    # 3: a generic proposal (v1 and v2 carried the bundled app's own fields; kept under schemas/,
    # that app upcasts them).
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


# ---------------------------------------------------------------- operators


class OperatorCommandPayload(Model):
    """An operator's action on one process: recorded in the journal like any other input."""

    # release: a quarantined process takes its parked inputs again; resume: a stuck process asks its
    # definition to issue its work again; escalate: a human takes over (the process ends escalated).
    action: Literal["release", "resume", "escalate"]
    operator: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)


@event_type
class OperatorCommand(Event):
    TYPE = "OperatorCommand"
    TOPIC = "pm.operator"
    payload: OperatorCommandPayload


# ---------------------------------------------------------------- journal and DLQ


class JournalEntryPayload(Model):
    """One journal record: an input the PM accepted, and what it decided."""

    process: str  # process definition name
    process_version: int  # the definition version this process runs on
    input_topic: str
    input_partition: int
    input_offset: int
    event: bytes  # the input event, single-object encoded (exactly as received)
    # parked: kept for a quarantined process (decided after `pm quarantine release`); quarantined: the
    # input whose transaction kept aborting, parked as the first of its process's quarantine.
    outcome: Literal["applied", "rejected", "failed", "parked", "quarantined"]
    reason: str | None = None  # why rejected, failed, parked or quarantined
    status: str  # process status after this entry
    commands: list[bytes] = Field(default_factory=list)  # encoded command events
    published: list[bytes] = Field(default_factory=list)  # encoded published events
    timers_scheduled: list[TimerSpec] = Field(default_factory=list)
    timers_cancelled: list[str] = Field(default_factory=list)
    # When the PM decided (the `now` decide saw); replays pass it again. None in version-1 entries,
    # which were decided with the input's occurred_at.
    decided_at: Timestamp | None = None
    # The process record after this entry (JSON, as the store keeps it less `journal_offset`): a
    # rebuild takes the last one per process instead of re-deciding every input. None in entries
    # before version 3, for a quarantined process (its parked inputs can be large) and when it would
    # not fit the record limit; the fold re-decides those entries as before.
    record: bytes | None = None


@event_type
class JournalEntry(Event):
    TYPE = "JournalEntry"
    TOPIC = "pm.journal"
    # 2: the payload gained `decided_at` (schemas/v1/ keeps version 1); 3: `record` (schemas/v2/).
    SCHEMA_VERSION = 3
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
