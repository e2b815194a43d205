"""The review tool's Python API: list pending approvals, decide them, publish signed decisions.

`ReviewClient` reads `approvals.requested` (requests, reminders) and `approvals`
(decisions) from the start to the end of every partition (end = `enable.partition.eof`,
never the high watermark, which the local broker gets wrong) and works out, from the
topics alone, which requests still wait:

- a request is *decided* once a decision for its approval ID that the PM could accept
  is on `approvals`: same correlation ID, proposal hash and policy version, before the
  deadline, and, as far as this tool's own configuration can tell, correctly signed and
  by an allowed reviewer. Other decisions (forged, stale, garbled) are listed as
  `ignored` with the reason, so they cannot hide a request from the reviewers. Whether
  the PM accepted a decision is the PM's call (see the journal); the topics cannot tell;
- a request is *superseded* when a later request for the same correlation ID carries
  another approval ID (the proposal changed and approval was asked again);
- reminders change nothing but are counted;
- everything else is *pending*, oldest first.

Decisions are built and signed by `pm.approvals.build_decision` and produced to
`approvals` keyed by the correlation ID, waiting for delivery. `pm approvals ...` is
a thin CLI over this module.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, Producer, TopicPartition

from pm.approvals import ApprovalVerifier, build_decision, signing_key
from pm.client import produce_event
from pm.codec import CodecError, decode
from pm.config import Config
from pm.errors import PmError
from pm.events import ApprovalDecided, ApprovalReminder, ApprovalRequested, Event
from pm.kafka import make_consumer, make_producer
from pm.proposals import canonical_json

__all__ = [
    "REQUESTS_TOPIC",
    "DECISIONS_TOPIC",
    "ReviewError",
    "UnknownApproval",
    "PendingApproval",
    "Published",
    "ReviewClient",
]

REQUESTS_TOPIC = "approvals.requested"
DECISIONS_TOPIC = "approvals"

Status = Literal["pending", "decided", "superseded"]


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object from a request field; anything else (a bug upstream) is shown as `{"raw": text}`."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": text}


class ReviewError(PmError, RuntimeError):
    """The review tool cannot do what was asked (topics missing, broker unreachable, already decided...)."""


class UnknownApproval(ReviewError, LookupError):
    """No request with that approval ID on `approvals.requested`."""


@dataclass(frozen=True)
class PendingApproval:
    """One approval request and what the topics say happened to it since."""

    request: ApprovalRequested
    decisions: tuple[ApprovalDecided, ...] = ()  # ones the PM could accept (see module doc)
    ignored: tuple[tuple[ApprovalDecided, str], ...] = ()  # (decision, why it cannot count)
    reminders: tuple[ApprovalReminder, ...] = ()
    superseded_by: str | None = None  # approval ID of the later request for the same correlation ID

    @property
    def approval_id(self) -> str:
        return self.request.payload.approval_id

    @property
    def correlation_id(self) -> str:
        return self.request.correlation_id

    @property
    def requested_at(self) -> datetime:
        return self.request.payload.requested_at

    @property
    def deadline(self) -> datetime:
        return self.request.payload.deadline

    @property
    def proposal(self) -> dict[str, Any]:
        """The proposal the reviewer approves (the app's model as a JSON object)."""
        return _json_object(self.request.payload.proposal)

    @property
    def status(self) -> Status:
        if self.decisions:
            return "decided"
        if self.superseded_by is not None:
            return "superseded"
        return "pending"

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.deadline

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        """A flat, JSON-ready view: the request payload plus envelope fields and the status."""
        payload = self.request.payload
        data: dict[str, Any] = {
            "approval_id": self.approval_id,
            "correlation_id": self.correlation_id,
            "request_event_id": self.request.event_id,
            "status": self.status,
            "expired": self.expired(now),
            "requested_at": payload.model_dump(mode="json")["requested_at"],
            "deadline": payload.model_dump(mode="json")["deadline"],
            "reminders": len(self.reminders),
        }
        data.update({k: v for k, v in payload.model_dump(mode="json").items() if k not in data})
        data["proposal"] = self.proposal
        data["context"] = _json_object(payload.context)
        data["decisions"] = [d.model_dump(mode="json") for d in self.decisions]
        data["ignored_decisions"] = [
            {
                "event_id": d.event_id,
                "decision": d.payload.decision,
                "reviewer": d.payload.reviewer,
                "why": why,
            }
            for d, why in self.ignored
        ]
        data["superseded_by"] = self.superseded_by
        return data


@dataclass(frozen=True)
class Published:
    """A decision the review tool produced, and where it landed."""

    event: ApprovalDecided
    topic: str
    partition: int
    offset: int


@dataclass
class _Scan:
    requests: list[ApprovalRequested] = field(default_factory=list)
    decisions: list[ApprovalDecided] = field(default_factory=list)
    reminders: list[ApprovalReminder] = field(default_factory=list)
    skipped: int = 0  # undecodable records (the PM sends those to the DLQ; here they are just not ours)


class ReviewClient:
    """List and decide approvals on the topics of `config` (see module doc)."""

    def __init__(self, config: Config, *, key_id: str | None = None, read_timeout: float = 30.0) -> None:
        self.config = config
        self.key_id = key_id
        self.read_timeout = read_timeout
        self._producer: Producer | None = None
        self._verifier = ApprovalVerifier(config)
        self.skipped = 0  # undecodable records seen by the last read

    # ------------------------------------------------------------ reading

    def approvals(self) -> list[PendingApproval]:
        """Every request on the topics with its status, oldest first."""
        scan = self._scan()
        self.skipped = scan.skipped
        decisions: dict[str, list[ApprovalDecided]] = {}
        for decided in _unique(scan.decisions):
            decisions.setdefault(decided.payload.approval_id, []).append(decided)
        reminders: dict[str, list[ApprovalReminder]] = {}
        for reminder in _unique(scan.reminders):
            reminders.setdefault(reminder.payload.approval_id, []).append(reminder)
        # Requests of one correlation ID share a key, hence a partition: read order is publish order.
        latest: dict[str, str] = {}
        firsts: dict[str, ApprovalRequested] = {}
        for request in _unique(scan.requests):
            approval_id = request.payload.approval_id
            firsts.setdefault(approval_id, request)
            latest[request.correlation_id] = approval_id
        records = []
        for approval_id, request in firsts.items():
            newest = latest[request.correlation_id]
            valid: list[ApprovalDecided] = []
            ignored: list[tuple[ApprovalDecided, str]] = []
            for decided in decisions.get(approval_id, ()):
                why = self._cannot_count(request, decided)
                if why is None:
                    valid.append(decided)
                else:
                    ignored.append((decided, why))
            records.append(
                PendingApproval(
                    request=request,
                    decisions=tuple(valid),
                    ignored=tuple(ignored),
                    reminders=tuple(reminders.get(approval_id, ())),
                    superseded_by=None if newest == approval_id else newest,
                )
            )
        records.sort(key=lambda r: (r.requested_at, r.request.occurred_at, r.approval_id))
        return records

    def _cannot_count(self, request: ApprovalRequested, decided: ApprovalDecided) -> str | None:
        """Why `decided` cannot be the decision the PM applies to `request` (None: it can)."""
        asked, p = request.payload, decided.payload
        if decided.correlation_id != request.correlation_id:
            return f"for correlation ID {decided.correlation_id!r}, not {request.correlation_id!r}"
        if p.draft_hash != asked.draft_hash:
            return "proposal hash mismatch"
        if p.policy_version != asked.policy_version:
            return "policy version mismatch"
        if p.decided_at > asked.deadline:
            return "expired: decided after the deadline"
        # Only checks this tool's configuration can make: without keys it cannot tell a forgery.
        if self._verifier.key_ids:
            refused = self._verifier.check_signature(decided)
            if refused is not None:
                return refused
        if self._verifier.reviewers:
            return self._verifier.check_reviewer(decided)
        return None

    def pending(self) -> list[PendingApproval]:
        """Requests with no decision and not superseded, oldest first (expired ones included, flagged)."""
        return [record for record in self.approvals() if record.status == "pending"]

    def show(self, approval_id: str) -> PendingApproval:
        for record in self.approvals():
            if record.approval_id == approval_id:
                return record
        raise UnknownApproval(
            f"no approval request {approval_id!r} on {self.config.topic(REQUESTS_TOPIC)}; "
            "`pm approvals list` shows the pending ones"
        )

    # ------------------------------------------------------------ deciding

    def approve(self, approval_id: str, reviewer: str, *, force: bool = False) -> Published:
        return self._decide(approval_id, reviewer, "approve", force=force)

    def reject(self, approval_id: str, reviewer: str, reason: str, *, force: bool = False) -> Published:
        if not reason.strip():
            raise ReviewError("a rejection needs a reason (--reason TEXT)")
        return self._decide(approval_id, reviewer, "reject", reason=reason, force=force)

    def edit(
        self,
        approval_id: str,
        reviewer: str,
        body: str,
        *,
        fields: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Published:
        """Approve with a corrected text for the proposal's editable field; the process checks it first.

        `fields` sets other proposal fields with the edit (signed with it; the process checks them with
        the text); None keeps the proposal's.
        """
        if not body.strip():
            raise ReviewError("an edit needs the corrected text (it is empty)")
        record = self.show(approval_id)
        if record.request.payload.editable is None:
            raise ReviewError(f"approval {approval_id} takes no edits: approve or reject it")
        unknown = sorted(set(fields or {}) - set(record.proposal))
        if unknown:
            raise ReviewError(
                f"the proposal has no field(s) {', '.join(unknown)}; its fields: {', '.join(sorted(record.proposal))}"
            )
        edited = canonical_json(fields) if fields else None
        return self._decide(approval_id, reviewer, "edit", edited_body=body, edited_fields=edited, force=force)

    def _decide(
        self,
        approval_id: str,
        reviewer: str,
        decision: Literal["approve", "reject", "edit"],
        *,
        reason: str | None = None,
        edited_body: str | None = None,
        edited_fields: str | None = None,
        force: bool,
    ) -> Published:
        if not reviewer.strip():
            raise ReviewError("a decision needs a reviewer name (--reviewer NAME)")
        key_id, secret = signing_key(self.config, self.key_id)  # fail before reading topics
        record = self.show(approval_id)
        if not force:
            _check_decidable(record)
        payload = record.request.payload
        event = build_decision(
            correlation_id=record.correlation_id,
            approval_id=approval_id,
            decision=decision,
            reviewer=reviewer.strip(),
            draft_hash=payload.draft_hash,
            policy_version=payload.policy_version,
            reason=reason,
            edited_body=edited_body,
            edited_fields=edited_fields,
            key_id=key_id,
            secret=secret,
            causation_id=record.request.event_id,
        )
        return self.publish(event)

    def close(self) -> None:
        """Drop the producer (it flushes on every publish), e.g. before a local broker goes away."""
        self._producer = None

    def publish(self, event: ApprovalDecided) -> Published:
        """Produce a (signed) decision to `approvals`, keyed by its correlation ID, and wait for delivery."""
        topic = self.config.topic(DECISIONS_TOPIC)
        if self._producer is None:
            self._producer = make_producer(self.config, "review")
        outcome: dict[str, Any] = {}

        def delivered(err: KafkaError | None, msg: Message) -> None:
            outcome["err"], outcome["msg"] = err, msg

        produce_event(self._producer, self.config, event, topic=DECISIONS_TOPIC, on_delivery=delivered)
        remaining = self._producer.flush(self.read_timeout)
        if remaining or "msg" not in outcome:
            raise ReviewError(
                f"decision not delivered to {topic} within {self.read_timeout:.0f}s; is the broker up?"
            )
        if outcome["err"] is not None:
            raise ReviewError(f"decision not delivered to {topic}: {outcome['err']}")
        msg: Message = outcome["msg"]
        return Published(event, topic, msg.partition() or 0, msg.offset() or 0)

    # ------------------------------------------------------------ the topics

    def _scan(self) -> _Scan:
        scan = _Scan()
        for msg in self._read_to_end((REQUESTS_TOPIC, DECISIONS_TOPIC)):
            try:
                event = decode(msg.value() or b"")
            except CodecError:
                scan.skipped += 1
                continue
            if isinstance(event, ApprovalRequested):
                scan.requests.append(event)
            elif isinstance(event, ApprovalDecided):
                scan.decisions.append(event)
            elif isinstance(event, ApprovalReminder):
                scan.reminders.append(event)
        return scan

    def _read_to_end(self, logical_topics: Iterable[str]) -> list[Message]:
        """Every record of the topics, from the beginning to the end each partition had when reached."""
        consumer = make_consumer(
            self.config, "review", f"pm-review-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
        )
        try:
            partitions: list[TopicPartition] = []
            for logical in logical_topics:
                topic = self.config.topic(logical)
                meta = consumer.list_topics(topic, timeout=self.read_timeout).topics.get(topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    raise ReviewError(
                        f"topic {topic} does not exist; create the topics with `pm topics apply`"
                    )
                partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
            consumer.assign(partitions)
            waiting = {(tp.topic, tp.partition) for tp in partitions}
            records: list[Message] = []
            deadline = time.monotonic() + self.read_timeout
            while waiting:
                if time.monotonic() > deadline:
                    raise ReviewError(
                        f"could not read to the end of {sorted(t for t, _ in waiting)} within "
                        f"{self.read_timeout:.0f}s; is the broker up?"
                    )
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    err = msg.error()
                    if err is None:
                        records.append(msg)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard((msg.topic() or "", msg.partition() or 0))
                    elif err.fatal() or not err.retriable():
                        raise ReviewError(f"reading {msg.topic()}: {err.str()}")
            return records
        finally:
            consumer.close()


def _unique(events: Iterable[Event]) -> list[Any]:
    """Drop repeats of an event ID (the local broker shows aborted transactions' records)."""
    seen: set[str] = set()
    kept: list[Event] = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            kept.append(event)
    return kept


def _check_decidable(record: PendingApproval) -> None:
    if record.status == "decided":
        first = record.decisions[0].payload
        raise ReviewError(
            f"approval {record.approval_id} was already decided ({first.decision} by {first.reviewer} at "
            f"{first.decided_at.isoformat()}); --force publishes anyway: the PM refuses a duplicate, "
            "but takes a new edit when it refused the previous one (see `pm inspect`)"
        )
    if record.status == "superseded":
        raise ReviewError(
            f"approval {record.approval_id} was superseded by {record.superseded_by} (the proposal changed); "
            "decide the new request instead"
        )
    if record.expired():
        raise ReviewError(
            f"approval {record.approval_id} expired at {record.deadline.isoformat()}; "
            "the PM escalates expired approvals and will refuse a late decision (--force publishes anyway)"
        )
