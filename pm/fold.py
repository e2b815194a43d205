"""The journal fold, pure: building entries, and folding them into process records.

The live path (`pm.runtime`) and the catch-up path (restart, rebuild) share
`evaluate` + `advance`, so a state folded from the journal is the state the
live run had: an `applied` entry is re-decided on its recorded input (decide is
pure), a `rejected` one keeps the state, a `failed` one marks the process failed.
No Kafka here: `pm.journal` reads the journal topic and hands records to this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from pm.codec import encode
from pm.errors import PmError
from pm.events import Event, JournalEntry, JournalEntryPayload, TimerFired, TimerSpec, derive_id, utc_ms
from pm.process import Decision, ProcessDefinition, ProcessState, Status
from pm.registry import Registry

__all__ = [
    "JOURNAL_TOPIC",
    "MAX_PROCESSED",
    "JournalRecord",
    "JournalError",
    "Outcome",
    "ProcessRecord",
    "Verifier",
    "build_entry",
    "evaluate",
    "advance",
    "fold_entry",
    "decision_time",
]

JOURNAL_TOPIC = "pm.journal"
MAX_PROCESSED = 1000  # input event IDs remembered per process for dedupe (a process sees far fewer)

Verifier = Callable[[Event], str | None]


class JournalError(PmError, RuntimeError):
    """The journal cannot be read (or holds something that is not a journal entry)."""


class JournalRecord(NamedTuple):
    partition: int
    offset: int
    entry: JournalEntry
    event: Event  # the input event the entry records (decoded from entry.payload.event)


# ---------------------------------------------------------------- process records


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

    @property
    def status(self) -> str:
        return str(self.state.status)

    @property
    def active(self) -> bool:
        return self.state.status == Status.RUNNING

    def seen(self, event_id: str) -> bool:
        return event_id in self.processed

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "version": self.version,
            "status": self.status,
            "state": self.state.model_dump(mode="json"),
            "journal_offset": self.journal_offset,
            "processed": self.processed,
            "timers": {k: [due, name] for k, (due, name) in self.timers.items()},
        }

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
        )
        return record, definition


@dataclass(frozen=True)
class Outcome:
    outcome: str  # applied | rejected | failed
    reason: str | None
    decision: Decision[Any] | None


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
    if outcome.outcome == "applied" and outcome.decision is not None:
        new_state: ProcessState = outcome.decision.state
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
    if new_state.terminal:
        timers = {}  # a finished process has nothing left to wake up for
    processed = [*(record.processed if record is not None else []), event.event_id][-MAX_PROCESSED:]
    return ProcessRecord(
        correlation_id=event.correlation_id,
        process=definition.name,
        version=int(definition.version),
        state=new_state,
        journal_offset=journal_offset,
        processed=processed,
        timers=timers,
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
) -> JournalEntry:
    """The journal entry for one accepted input: what came in (exact bytes) and what was decided."""
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
    )
    return JournalEntry(
        event_id=derive_id(event.event_id, "journal"),
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        occurred_at=event.occurred_at,
        payload=payload,
    )


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
    if payload.outcome == "applied":
        outcome = evaluate(definition, state, event, now=decision_time(entry, event))
        if outcome.outcome != "applied":  # today's code disagrees with the record: the record wins
            outcome = Outcome("failed", payload.reason or f"not reproducible on fold: {outcome.reason}", None)
    else:
        outcome = Outcome(payload.outcome, payload.reason, None)
    return advance(definition, record, state, event, outcome, offset)
