"""The journal fold, pure: building entries, and folding them into process records.

The live path (`pm.runtime`) and the catch-up path (restart, rebuild) share
`evaluate` + `advance`, so a state folded from the journal is the state the
live run had: an `applied` entry is re-decided on its recorded input (decide is
pure), a `rejected` one keeps the state, a `failed` one marks the process failed.
An entry also carries the record after it (`ProcessRecord.snapshot`): catch-up
takes the last one of a process instead (`pm.runtime.recovery.WindowFold`) and
folds entry by entry only where entries have none.
No Kafka here: `pm.journal` reads the journal topic and hands records to this module.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from pydantic_core import from_json, to_json

from pm.codec import encode
from pm.errors import PmError
from pm.events import (
    Event,
    JournalEntry,
    JournalEntryPayload,
    OperatorCommand,
    TimerFired,
    TimerSpec,
    derive_id,
    utc_ms,
)
from pm.process import Decision, ProcessDefinition, ProcessState, Status
from pm.registry import Registry

__all__ = [
    "JOURNAL_TOPIC",
    "MAX_PROCESSED",
    "JournalRecord",
    "JournalError",
    "MAX_PARKED",
    "MAX_PARKED_BYTES",
    "Outcome",
    "ProcessRecord",
    "Quarantine",
    "Verifier",
    "build_entry",
    "evaluate",
    "advance",
    "fold_entry",
    "decision_time",
    "operate",
    "stored_bytes",
    "stored_form",
    "park",
    "park_refusal",
    "stuck",
]

JOURNAL_TOPIC = "pm.journal"
MAX_PROCESSED = 1000  # input event IDs remembered per process for dedupe (a process sees far fewer)
# Inputs a quarantined process keeps for its release; past these, an input goes to the DLQ instead
# (a record that stays in the store must not grow without bound while nobody looks).
MAX_PARKED = 100
MAX_PARKED_BYTES = 16 * 1024 * 1024

Verifier = Callable[[Event], str | None]


class JournalError(PmError, RuntimeError):
    """The journal cannot be read (or holds something that is not a journal entry)."""


class JournalRecord(NamedTuple):
    partition: int
    offset: int
    entry: JournalEntry
    event: Event  # the input event the entry records (decoded from entry.payload.event)


# ---------------------------------------------------------------- process records


@dataclass(frozen=True)
class Quarantine:
    """Why a process is quarantined, what it was doing, and its parked inputs (topic, exact bytes) in order."""

    reason: str
    previous_status: str
    previous_reason: str | None = None
    parked: tuple[tuple[str, bytes], ...] = ()

    @property
    def parked_bytes(self) -> int:
        return sum(len(raw) for _, raw in self.parked)

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "previous_status": self.previous_status,
            "previous_reason": self.previous_reason,
            "parked": [[topic, base64.b64encode(raw).decode("ascii")] for topic, raw in self.parked],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Quarantine:
        return cls(
            reason=str(data["reason"]),
            previous_status=str(data["previous_status"]),
            previous_reason=data.get("previous_reason"),
            parked=tuple((str(t), base64.b64decode(r)) for t, r in data.get("parked", [])),
        )


@dataclass
class ProcessRecord:
    """One process as the store keeps it: the definition it runs on, its state, dedupe and timers."""

    correlation_id: str
    process: str
    version: int
    state: ProcessState
    journal_offset: int = -1
    processed: list[str] = field(default_factory=list)
    timers: dict[str, tuple[int, str]] = field(default_factory=dict)  # timer_id -> (due_ms, name)
    quarantine: Quarantine | None = None

    @property
    def status(self) -> str:
        return str(self.state.status)

    @property
    def active(self) -> bool:
        return self.state.status == Status.RUNNING

    def seen(self, event_id: str) -> bool:
        return event_id in self.processed

    def to_json(self) -> dict[str, Any]:
        return self._fields(self.state.model_dump(mode="json"), with_offset=True)

    def _fields(self, state: Any, *, with_offset: bool) -> dict[str, Any]:
        """The record's JSON fields around `state` (the state's own JSON form, or the model itself)."""
        return {
            "process": self.process,
            "version": self.version,
            "status": self.status,
            "state": state,
            **({"journal_offset": self.journal_offset} if with_offset else {}),
            "processed": self.processed,
            "timers": {k: [due, name] for k, (due, name) in self.timers.items()},
            **({"quarantine": self.quarantine.to_json()} if self.quarantine is not None else {}),
        }

    def snapshot(self) -> bytes | None:
        """The record as a journal entry carries it (JSON, no `journal_offset`); None when quarantined.

        A quarantined record holds its parked inputs (up to MAX_PARKED_BYTES): entries of such a
        process are folded by re-deciding, as entries without a record are.
        """
        if self.quarantine is not None:
            return None
        try:
            # The state model serialized in place: the same bytes as its `model_dump(mode="json")`
            # dumped (a test holds it to that) without that dict in between (2.5x cheaper, once per input).
            return to_json(self._fields(self.state, with_offset=False), by_alias=False)
        except ValueError:  # e.g. a lone surrogate in the state: no record, the fold re-decides
            return None

    @classmethod
    def from_json(
        cls, registry: Registry, correlation_id: str, data: Mapping[str, Any]
    ) -> tuple[ProcessRecord, ProcessDefinition[Any]]:
        definition, state = registry.resolve(str(data["process"]), int(data["version"]), data["state"])
        record = cls(
            correlation_id=correlation_id,
            process=definition.name,
            version=int(definition.version),
            state=state,
            journal_offset=int(data.get("journal_offset", -1)),
            processed=list(data.get("processed", [])),
            timers={k: (int(v[0]), str(v[1])) for k, v in dict(data.get("timers", {})).items()},
            quarantine=Quarantine.from_json(data["quarantine"]) if data.get("quarantine") else None,
        )
        return record, definition


@dataclass(frozen=True)
class Outcome:
    outcome: str  # applied | rejected | failed | parked | quarantined
    reason: str | None
    decision: Decision[Any] | None
    park: tuple[str, bytes] | None = None  # parked / quarantined: the input (logical topic, bytes)
    # A release: the parked inputs, decided right after it in order (each journaled as its own entry).
    parked: tuple[tuple[str, bytes], ...] = ()


def stuck(record: ProcessRecord) -> bool:
    """Running with nothing that can move it on: no live timer (waiting for a human has an approval pending).

    Every step command a process issues should come with a timeout timer; a running process without
    one waits for a result that may never come. The runtime reports it; an operator resumes or escalates.
    """
    return record.state.status == Status.RUNNING and not record.timers


def park(
    state: ProcessState, quarantine: Quarantine | None, reason: str | None, parked: tuple[str, bytes]
) -> tuple[ProcessState, Quarantine]:
    """The state and quarantine after one more input is parked (the first one quarantines)."""
    if quarantine is None:
        quarantine = Quarantine(
            reason=reason or "quarantined", previous_status=str(state.status), previous_reason=state.reason
        )
    quarantine = replace(quarantine, parked=(*quarantine.parked, parked))
    return state.model_copy(update={"status": Status.QUARANTINED, "reason": quarantine.reason}), quarantine


def park_refusal(quarantine: Quarantine, raw: bytes) -> str | None:
    """Why one more input cannot be parked for this quarantine (then it goes to the DLQ), or None."""
    if len(quarantine.parked) >= MAX_PARKED:
        return f"the quarantined process already holds {MAX_PARKED} parked inputs"
    if quarantine.parked_bytes + len(raw) > MAX_PARKED_BYTES:
        return f"the quarantined process's parked inputs would exceed {MAX_PARKED_BYTES} bytes"
    return None


def operate(
    definition: ProcessDefinition[Any], record: ProcessRecord, command: OperatorCommand, now: datetime
) -> Outcome:
    """An operator's command on a process, decided by the core (pure, like `decide`)."""
    state = record.state
    action, who = command.payload.action, command.payload.operator
    note = f": {command.payload.note}" if command.payload.note else ""
    quarantine = record.quarantine
    if action == "release":
        if quarantine is None:
            return Outcome("rejected", f"not quarantined (status {record.status})", None)
        # Validated, so the status is a `Status` again where it names one (model_copy would keep a str).
        released = type(state).model_validate(
            {**state.model_dump(), "status": quarantine.previous_status, "reason": quarantine.previous_reason}
        )
        return Outcome("applied", None, Decision(state=released), parked=quarantine.parked)
    if action == "escalate":
        if state.terminal and quarantine is None:
            return Outcome("rejected", f"already ended (status {record.status})", None)
        escalated = state.model_copy(
            update={"status": Status.ESCALATED, "reason": f"escalated by {who}{note}"}
        )
        return Outcome("applied", None, Decision(state=escalated))
    # resume: a stuck process asks its definition for its outstanding work again.
    if state.status != Status.RUNNING:
        hint = "; release it first" if quarantine is not None else ""
        return Outcome(
            "rejected", f"only a running process can be resumed (status {record.status}){hint}", None
        )
    resume = getattr(definition, "resume", None)
    if resume is None:
        return Outcome(
            "rejected", f"process {definition.name} defines no resume(); escalate it instead", None
        )
    try:
        decision = resume(state, command, now)
    except Exception as exc:  # a bug in the definition's resume: fail the process, as for decide
        return Outcome("failed", f"{type(exc).__name__}: {exc}", None)
    if decision.rejection is not None:
        return Outcome("rejected", decision.rejection, decision)
    return Outcome("applied", None, decision)


def evaluate(
    definition: ProcessDefinition[Any],
    state: ProcessState,
    event: Event,
    verifier: Verifier | None = None,
    *,
    now: datetime,
) -> Outcome:
    """Run the edge check and the pure decision; a raising `decide` fails only this process.

    `now` is the decision time: the runtime's clock live, `decision_time(entry, event)` on a fold.
    """
    if verifier is not None:
        refused = verifier(event)
        if refused is not None:
            return Outcome("rejected", refused, None)
    try:
        decision = definition.decide(state, event, now)
    except Exception as exc:  # a bug or an unhandled state: fail the process, keep the partition flowing
        return Outcome("failed", f"{type(exc).__name__}: {exc}", None)
    if decision.rejection is not None:
        return Outcome("rejected", decision.rejection, decision)
    return Outcome("applied", None, decision)


def _ms(spec: TimerSpec) -> int:
    return int(utc_ms(spec.due_at).timestamp() * 1000)


def advance(
    definition: ProcessDefinition[Any],
    record: ProcessRecord | None,
    state: ProcessState,
    event: Event,
    outcome: Outcome,
    journal_offset: int,
) -> ProcessRecord:
    """The process record after `event` with `outcome` (the same function for live runs and folds)."""
    timers = dict(record.timers) if record is not None else {}
    quarantine = record.quarantine if record is not None else None
    processed = [*(record.processed if record is not None else []), event.event_id][-MAX_PROCESSED:]
    new_state: ProcessState
    if outcome.outcome in ("parked", "quarantined") and outcome.park is not None:
        # Not processed: the release decides it then (its event ID must not look like a duplicate).
        processed = list(record.processed) if record is not None else []
        new_state, quarantine = park(state, quarantine, outcome.reason, outcome.park)
    elif outcome.outcome == "applied" and outcome.decision is not None:
        new_state = outcome.decision.state
        quarantine = None  # applied to a quarantined process: an operator released or escalated it
        for timer_id in outcome.decision.cancel:
            timers.pop(timer_id, None)
        for spec in outcome.decision.schedule:
            timers[spec.timer_id] = (_ms(spec), spec.name)
    elif outcome.outcome == "failed":
        new_state = state.model_copy(update={"status": Status.FAILED, "reason": outcome.reason})
    else:
        new_state = state
    if isinstance(event, TimerFired):
        timers.pop(event.payload.timer_id, None)  # fired: no longer pending, whatever decide made of it
    if new_state.terminal and quarantine is None:
        timers = {}  # a finished process has nothing left to wake up for (a quarantined one parks them)
    return ProcessRecord(
        correlation_id=event.correlation_id,
        process=definition.name,
        version=int(definition.version),
        state=new_state,
        journal_offset=journal_offset,
        processed=processed,
        timers=timers,
        quarantine=quarantine,
    )


def build_entry(
    definition: ProcessDefinition[Any],
    event: Event,
    raw: bytes,
    *,
    topic: str,
    partition: int,
    offset: int,
    outcome: Outcome,
    status: str,
    decided_at: datetime | None = None,
    record: bytes | None = None,
) -> JournalEntry:
    """The journal entry for one accepted input: what came in (exact bytes) and what was decided.

    `record`: the process record after it (`ProcessRecord.snapshot`), so a rebuild need not re-decide.
    """
    decision = outcome.decision if outcome.outcome == "applied" else None
    payload = JournalEntryPayload(
        process=definition.name,
        process_version=int(definition.version),
        input_topic=topic,
        input_partition=partition,
        input_offset=offset,
        event=bytes(raw),
        outcome=outcome.outcome,  # type: ignore[arg-type]
        reason=outcome.reason,
        status=status,
        commands=[encode(c) for c in decision.commands] if decision else [],
        published=[encode(p) for p in decision.publish] if decision else [],
        timers_scheduled=list(decision.schedule) if decision else [],
        timers_cancelled=list(decision.cancel) if decision else [],
        decided_at=decided_at,
        record=record,
    )
    return JournalEntry(
        event_id=derive_id(event.event_id, "journal"),
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        occurred_at=event.occurred_at,
        payload=payload,
    )


def stored_form(snapshot: bytes, journal_offset: int) -> tuple[dict[str, Any], bytes]:
    """The store's record (`ProcessRecord.to_json`), parsed and encoded, from an entry's `record` and offset."""
    try:
        data = from_json(snapshot)
    except ValueError as exc:
        raise JournalError(f"a journal entry's record is not JSON: {exc}") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("state"), dict)
        or "journal_offset" in data
        or snapshot[:1] != b"{"
    ):
        raise JournalError("a journal entry's record is not a process record")
    data["journal_offset"] = journal_offset
    return data, stored_bytes(snapshot, journal_offset)


def stored_bytes(snapshot: bytes, journal_offset: int) -> bytes:
    """The store's encoded record: a `ProcessRecord.snapshot` with its journal offset put back in."""
    return b'{"journal_offset":%d,' % journal_offset + snapshot[1:]


def decision_time(entry: JournalEntry, event: Event) -> datetime:
    """The `now` the entry's input was decided with (the input's time in entries before `decided_at`)."""
    decided_at = entry.payload.decided_at
    return event.occurred_at if decided_at is None else decided_at


def fold_entry(
    registry: Registry, record: ProcessRecord | None, entry: JournalEntry, event: Event, offset: int
) -> ProcessRecord | None:
    """Apply one journal entry to a record; None when it changes nothing (an input already applied)."""
    if record is not None and record.seen(event.event_id):
        return None  # a duplicate entry (e.g. of an aborted transaction on a broker that shows those)
    payload = entry.payload
    definition: ProcessDefinition[Any]
    if record is None:
        definition = registry.get(payload.process, payload.process_version) or registry.latest(
            payload.process
        )
        state = definition.initial_state(event)
    else:
        known = registry.get(record.process, record.version)
        if known is not None:
            definition, state = known, record.state
        else:
            definition, state = registry.resolve(
                record.process, record.version, record.state.model_dump(mode="json")
            )
    if payload.outcome in ("parked", "quarantined"):
        outcome = Outcome(
            payload.outcome, payload.reason, None, park=(payload.input_topic, bytes(payload.event))
        )
    elif payload.outcome == "applied" and isinstance(event, OperatorCommand) and record is not None:
        outcome = operate(definition, record, event, decision_time(entry, event))
        if outcome.outcome != "applied":
            outcome = Outcome("failed", payload.reason or f"not reproducible on fold: {outcome.reason}", None)
    elif payload.outcome == "applied":
        outcome = evaluate(definition, state, event, now=decision_time(entry, event))
        if outcome.outcome != "applied":  # today's code disagrees with the record: the record wins
            outcome = Outcome("failed", payload.reason or f"not reproducible on fold: {outcome.reason}", None)
    else:
        outcome = Outcome(payload.outcome, payload.reason, None)
    return advance(definition, record, state, event, outcome, offset)
