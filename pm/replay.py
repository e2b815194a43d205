"""Replay, verify, what-if and inspect: answer "what happened, and why" from `pm.journal` alone.

Everything here reads only Kafka (never a PM store) and returns data; `pm.commands.replay`
prints it. The fold is the journal's own (`pm.journal.evaluate`): an `applied` entry is
re-decided on its recorded input, a `rejected` one keeps the state, a `failed` one marks
the process failed; a repeated input (an aborted transaction's copy) is skipped.

- `replay_process` folds one correlation ID, recording per entry what changed in the state
  and what the journal says was decided; with `verify=True` it also compares today's
  `decide` with the record (commands, published events, timers, status) field by field.
- `verify_all` does that for every process in the journal.
- `what_if` replays every process against another definition and reports where the route,
  the terminal state or the set of steps run would differ.
- `inspect_process` is the timeline of one process (inputs, commands, published events, timers).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import TopicPartition
from pydantic_core import from_json

from pm.app import load_app
from pm.codec import decode
from pm.config import Config
from pm.errors import PmError
from pm.events import Event, OperatorCommand, TimerSpec, utc_ms
from pm.fold import ProcessRecord, Quarantine, operate, park
from pm.journal import (
    JOURNAL_TOPIC,
    JournalRecord,
    decision_time,
    evaluate,
    iter_journal,
    journal_partitions,
)
from pm.kafka import make_consumer
from pm.partitioner import partition_for
from pm.process import Decision, ProcessDefinition, ProcessState, Status
from pm.registry import Registry, RegistryError

__all__ = [
    "ReplayError",
    "Until",
    "Difference",
    "ReplayStep",
    "ProcessReplay",
    "Replayer",
    "VerifyReport",
    "WhatIfProcess",
    "WhatIfReport",
    "Progress",
    "deployed_registry",
    "load_definition",
    "records_for",
    "replay_records",
    "replay_process",
    "verify_all",
    "what_if",
    "what_if_records",
    "inspect_process",
    "timeline",
    "journal_size_estimate",
]


class ReplayError(PmError, LookupError):
    """Nothing to replay (unknown correlation ID, bad --until, unloadable definition)."""


# ---------------------------------------------------------------- partitioning and reading


def records_for(
    config: Config, correlation_id: str, *, idle_timeout: float = 30.0
) -> Iterator[JournalRecord]:
    """The journal records of one process, in journal order (only its partition is read)."""
    partitions = journal_partitions(config)
    if not partitions:
        return
    partition = partition_for(correlation_id.encode("utf-8"), len(partitions))
    for record in iter_journal(config, [partition], idle_timeout=idle_timeout, decode_events=False):
        if record.entry.correlation_id == correlation_id:
            yield JournalRecord(
                record.partition, record.offset, record.entry, decode(record.entry.payload.event)
            )


def journal_size_estimate(config: Config) -> int:
    """Roughly how many journal records there are: for a progress bar only, never to detect the end.

    (The local broker's high watermark is wrong; the readers stop on partition EOF instead.)
    """
    topic = config.topic(JOURNAL_TOPIC)
    consumer = make_consumer(config, "journal-estimate", f"{config.topic_prefix}pm-journal-estimate")
    try:
        total = 0
        for p in journal_partitions(config):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
            total += max(0, high - max(low, 0))
        return total
    except Exception:  # an estimate: a failure only costs the bar its percentage
        return 0
    finally:
        consumer.close()


# ---------------------------------------------------------------- definitions


def deployed_registry(config: Config | None = None) -> Registry:
    """The deployed process definitions: the configured app's (`--app`, `PM_APP`, else the bundled one)."""
    return Registry(load_app(config.app or None if config is not None else None).processes)


def load_definition(spec: str) -> ProcessDefinition[Any]:
    """`MODULE:NAME` -> that object, which must look like a process definition."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ReplayError(f"--definition {spec!r}: expected MODULE:NAME (e.g. mypkg.rules:MY_PROCESS_V2)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReplayError(f"--definition {spec!r}: cannot import {module_name}: {exc}") from exc
    definition = getattr(module, attr, None)
    if definition is None:
        raise ReplayError(f"--definition {spec!r}: {module_name} has no attribute {attr!r}")
    missing = [a for a in ("name", "version", "initial_state", "decide") if not hasattr(definition, a)]
    if missing:
        raise ReplayError(f"--definition {spec!r} is not a process definition (missing {', '.join(missing)})")
    return definition


# ---------------------------------------------------------------- --until


@dataclass(frozen=True)
class Until:
    """Where a replay stops: a journal offset, an input time, or an event ID (all inclusive)."""

    offset: int | None = None
    time: datetime | None = None
    event_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> Until:
        text = text.strip()
        if text.isdigit():
            return cls(offset=int(text))
        if text[:4].isdigit() and text[4:5] == "-":
            try:
                return cls(time=utc_ms(datetime.fromisoformat(text)))
            except ValueError as exc:
                raise ReplayError(f"--until {text!r}: not an ISO time ({exc})") from exc
        if not text:
            raise ReplayError("--until needs an offset, an ISO time or an event ID")
        return cls(event_id=text)

    def before(self, record: JournalRecord) -> bool:
        """True when `record` lies past the limit (stop without applying it)."""
        if self.offset is not None:
            return record.offset > self.offset
        if self.time is not None:  # what the PM had decided by then (inputs can be decided late)
            return decision_time(record.entry, record.event) > self.time
        return False

    def reached(self, record: JournalRecord) -> bool:
        """True when `record` is the last one to apply."""
        return self.event_id is not None and self.event_id in (record.event.event_id, record.entry.event_id)

    def describe(self) -> str:
        if self.offset is not None:
            return f"offset {self.offset}"
        if self.time is not None:
            return self.time.isoformat()
        return f"event {self.event_id}"


# ---------------------------------------------------------------- per-entry results


@dataclass(frozen=True)
class Difference:
    """One way today's decision differs from the journal's record of it."""

    offset: int
    event_type: str
    event_id: str
    field: str  # outcome | status | commands | published | timers_scheduled | timers_cancelled
    lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "event_type": self.event_type,
            "event_id": self.event_id,
            "field": self.field,
            "lines": list(self.lines),
        }


def _event_json(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.type, "event_id": event.event_id}
    step = getattr(type(event), "STEP", None)
    if step is not None:
        out["step"] = str(step)
    for name in ("attempt", "command_id", "approval_id"):
        value = getattr(event.payload, name, None)
        if value is not None:
            out[name] = value
    return out


def _timer_json(spec: TimerSpec) -> dict[str, Any]:
    return {"timer_id": spec.timer_id, "name": spec.name, "due_at": spec.due_at.isoformat()}


@dataclass(frozen=True)
class ReplayStep:
    """One journal entry replayed: the input, the state fields it changed, what was decided."""

    partition: int
    offset: int
    event_type: str
    event_id: str
    occurred_at: datetime
    decided_at: datetime  # when the PM decided it (the input's time in entries written before v2)
    outcome: str
    reason: str | None
    status: str  # as recorded after this entry
    changes: Mapping[str, tuple[Any, Any]]  # field -> (before, after), JSON values
    commands: tuple[Event, ...]  # as recorded
    published: tuple[Event, ...]
    timers_scheduled: tuple[TimerSpec, ...]
    timers_cancelled: tuple[str, ...]
    duplicate: bool = False  # a repeated input (skipped by the fold)
    differences: tuple[Difference, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "event",
            "partition": self.partition,
            "offset": self.offset,
            "occurred_at": self.occurred_at.isoformat(),
            "decided_at": self.decided_at.isoformat(),
            "type": self.event_type,
            "event_id": self.event_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "status": self.status,
            "duplicate": self.duplicate,
            "changes": {k: {"before": b, "after": a} for k, (b, a) in self.changes.items()},
            "commands": [_event_json(c) for c in self.commands],
            "published": [_event_json(p) for p in self.published],
            "timers_scheduled": [_timer_json(t) for t in self.timers_scheduled],
            "timers_cancelled": list(self.timers_cancelled),
            "differences": [d.to_json() for d in self.differences],
        }


def _state_json(state: ProcessState | None) -> dict[str, Any]:
    return {} if state is None else state.model_dump(mode="json")


def _changes(before: ProcessState | None, after: ProcessState | None) -> dict[str, tuple[Any, Any]]:
    old, new = _state_json(before), _state_json(after)
    return {k: (old.get(k), new.get(k)) for k in {**old, **new} if old.get(k) != new.get(k)}


# ---------------------------------------------------------------- field-by-field comparison


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_diff(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    old, new = _flatten(dict(recorded)), _flatten(dict(now))
    return [
        f"{key}: recorded {_short(old.get(key, '<absent>'))}, now {_short(new.get(key, '<absent>'))}"
        for key in sorted({**old, **new})
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    ]


def _label(event: Event) -> str:
    info = _event_json(event)
    step = f" {info['step']}#{info.get('attempt')}" if "step" in info else ""
    return f"{event.type}{step} {event.event_id}"


def _compare_events(recorded: Iterable[Event], now: Iterable[Event]) -> list[str]:
    """Diff lines for two event lists, matched by (deterministic) event ID."""
    rec, cur = list(recorded), list(now)
    rec_by, cur_by = {e.event_id: e for e in rec}, {e.event_id: e for e in cur}
    lines: list[str] = []
    for e in rec:
        if e.event_id not in cur_by:
            lines.append(f"- {_label(e)} (recorded, not decided now)")
    for e in cur:
        if e.event_id not in rec_by:
            lines.append(f"+ {_label(e)} (decided now, not recorded)")
    for e in rec:
        other = cur_by.get(e.event_id)
        if other is not None:
            diff = _field_diff(e.model_dump(mode="json"), other.model_dump(mode="json"))
            lines.extend(f"~ {_label(e)}: {d}" for d in diff)
    if not lines and [e.event_id for e in rec] != [e.event_id for e in cur]:
        lines.append(
            f"~ order: recorded {[e.type for e in rec]}, now {[e.type for e in cur]}"  # same events, new order
        )
    return lines


def _compare_timers(recorded: Iterable[TimerSpec], now: Iterable[TimerSpec]) -> list[str]:
    rec = {t.timer_id: t for t in recorded}
    cur = {t.timer_id: t for t in now}
    lines = [
        f"- timer {t.name} {i} due {t.due_at.isoformat()} (recorded, not decided now)"
        for i, t in rec.items()
        if i not in cur
    ]
    lines += [
        f"+ timer {t.name} {i} due {t.due_at.isoformat()} (decided now, not recorded)"
        for i, t in cur.items()
        if i not in rec
    ]
    for i, t in rec.items():
        if i in cur:
            lines.extend(
                f"~ timer {t.name} {i}: {d}"
                for d in _field_diff(t.model_dump(mode="json"), cur[i].model_dump(mode="json"))
            )
    return lines


def _compare(
    record: JournalRecord, recorded: _Recorded, decision: Decision[Any], status: str
) -> list[Difference]:
    p = record.entry.payload
    diffs: list[Difference] = []

    def add(name: str, lines: list[str]) -> None:
        if lines:
            diffs.append(
                Difference(record.offset, record.event.type, record.event.event_id, name, tuple(lines))
            )

    add("commands", _compare_events(recorded.commands, decision.commands))
    add("published", _compare_events(recorded.published, decision.publish))
    add("timers_scheduled", _compare_timers(p.timers_scheduled, decision.schedule))
    rec_cancel, now_cancel = list(p.timers_cancelled), list(decision.cancel)
    add(
        "timers_cancelled",
        [f"- cancel {t} (recorded, not decided now)" for t in rec_cancel if t not in now_cancel]
        + [f"+ cancel {t} (decided now, not recorded)" for t in now_cancel if t not in rec_cancel],
    )
    if status != p.status:
        add("status", [f"status: recorded {p.status!r}, now {status!r}"])
    return diffs


def _compare_record(record: JournalRecord, state: ProcessState) -> list[Difference]:
    """The state the entry carries (what a rebuild takes) against the state re-deciding gives."""
    carried = record.entry.payload.record
    try:
        recorded = from_json(carried or b"")["state"]
        lines = _field_diff(recorded, _state_json(state))
    except (ValueError, KeyError, TypeError) as exc:
        lines = [f"record: not a process record ({exc})"]
    if not lines:
        return []
    return [Difference(record.offset, record.event.type, record.event.event_id, "record", tuple(lines))]


@dataclass(frozen=True)
class _Recorded:
    commands: tuple[Event, ...]
    published: tuple[Event, ...]

    @classmethod
    def of(cls, record: JournalRecord) -> _Recorded:
        p = record.entry.payload
        return cls(tuple(decode(c) for c in p.commands), tuple(decode(e) for e in p.published))


# ---------------------------------------------------------------- the fold


class Replayer:
    """Folds one process's journal records, one at a time (streaming; no I/O)."""

    def __init__(
        self, registry: Registry, *, verify: bool = False, definition: ProcessDefinition[Any] | None = None
    ) -> None:
        self.registry = registry
        self.verify = verify
        self.override = definition
        self.definition: ProcessDefinition[Any] | None = None
        self.state: ProcessState | None = None
        self.status: str | None = None  # as recorded by the last entry
        self.correlation_id: str | None = None
        self.seen: set[str] = set()
        self.events = 0  # entries folded (duplicates excluded)
        self.checked = 0  # applied entries re-decided and compared
        self.quarantine: Quarantine | None = None

    def _resolve(self, record: JournalRecord) -> ProcessDefinition[Any]:
        p = record.entry.payload
        if self.override is not None and self.override.name == p.process:
            return self.override
        # Like the runtime's fold: the version the process started on, else the newest (upcast).
        found = self.registry.get(p.process, p.process_version)
        return found if found is not None else self.registry.latest(p.process)

    def feed(self, record: JournalRecord) -> ReplayStep:
        entry, event = record.entry, record.event
        p = entry.payload
        recorded = _Recorded.of(record)
        duplicate = event.event_id in self.seen
        before = self.state
        decided_at = decision_time(entry, event)
        diffs: list[Difference] = []
        if not duplicate:
            self.seen.add(event.event_id)
            self.events += 1
            if self.definition is None:
                self.correlation_id = entry.correlation_id
                self.definition = self._resolve(record)
                # The first entry's changes are what `decide` made of the initial state.
                self.state = before = self.definition.initial_state(event)
            assert self.state is not None
            self.status = p.status
            runtime = _runtime_entry(self.definition, self.state, self.quarantine, record, decided_at)
            if runtime is not None:  # quarantine, parking, operator commands: decided by the core
                self.state, self.quarantine, parked = runtime
                if parked:
                    self.seen.discard(event.event_id)  # decided again on release
            elif p.outcome == "applied":
                outcome = evaluate(self.definition, self.state, event, now=decided_at)
                if outcome.outcome == "applied" and outcome.decision is not None:
                    self.state = outcome.decision.state
                    if self.verify:
                        self.checked += 1
                        diffs = _compare(record, recorded, outcome.decision, str(self.state.status))
                else:
                    # Today's code refuses what was applied: the record wins, the process is failed.
                    self.state = self.state.model_copy(
                        update={"status": Status.FAILED, "reason": outcome.reason}
                    )
                    if self.verify:
                        self.checked += 1
                        diffs = [
                            Difference(
                                record.offset,
                                event.type,
                                event.event_id,
                                "outcome",
                                (f"outcome: recorded 'applied', now {outcome.outcome!r} ({outcome.reason})",),
                            )
                        ]
            elif p.outcome == "failed":
                self.state = self.state.model_copy(update={"status": Status.FAILED, "reason": p.reason})
            # Only against the definition the entry was decided by: another version (an upcast, a
            # what-if definition) may shape its state differently without deciding differently.
            if (
                self.verify
                and p.record is not None
                and self.override is None
                and self.definition.version == p.process_version
            ):
                diffs += _compare_record(record, self.state)
        return ReplayStep(
            partition=record.partition,
            offset=record.offset,
            event_type=event.type,
            event_id=event.event_id,
            occurred_at=event.occurred_at,
            decided_at=decided_at,
            outcome=p.outcome,
            reason=p.reason,
            status=p.status,
            changes={} if duplicate else _changes(before, self.state),
            commands=recorded.commands,
            published=recorded.published,
            timers_scheduled=tuple(p.timers_scheduled),
            timers_cancelled=tuple(p.timers_cancelled),
            duplicate=duplicate,
            differences=tuple(diffs),
        )


@dataclass
class ProcessReplay:
    correlation_id: str
    process: str | None
    version: int | None
    steps: list[ReplayStep]
    state: ProcessState | None
    status: str | None  # recorded status after the last replayed entry
    until: Until | None = None
    checked: int = 0

    @property
    def differences(self) -> list[Difference]:
        return [d for s in self.steps for d in s.differences]

    def state_json(self) -> dict[str, Any]:
        return {
            "kind": "state",
            "correlation_id": self.correlation_id,
            "process": self.process,
            "version": self.version,
            "status": self.status,
            "until": self.until.describe() if self.until else None,
            "state": _state_json(self.state),
        }


def replay_records(
    correlation_id: str,
    records: Iterable[JournalRecord],
    registry: Registry,
    *,
    verify: bool = False,
    until: Until | None = None,
    definition: ProcessDefinition[Any] | None = None,
) -> ProcessReplay:
    """Fold the records of one process (already filtered to it), stopping at `until`."""
    replayer = Replayer(registry, verify=verify, definition=definition)
    steps: list[ReplayStep] = []
    reached = until is None or until.event_id is None
    for record in records:
        if until is not None and until.before(record):
            break
        try:
            steps.append(replayer.feed(record))
        except RegistryError as exc:
            raise ReplayError(f"{correlation_id}: {exc}") from exc
        if until is not None and until.reached(record):
            reached = True
            break
    if not steps:
        raise ReplayError(f"no journal entries for correlation ID {correlation_id!r}")
    if not reached:
        raise ReplayError(
            f"--until {until.describe() if until else ''}: not in the journal of {correlation_id}"
        )
    d = replayer.definition
    return ProcessReplay(
        correlation_id=correlation_id,
        process=d.name if d else None,
        version=int(d.version) if d else None,
        steps=steps,
        state=replayer.state,
        status=replayer.status,
        until=until,
        checked=replayer.checked,
    )


def replay_process(
    config: Config,
    correlation_id: str,
    registry: Registry | None = None,
    *,
    verify: bool = False,
    until: Until | None = None,
    definition: ProcessDefinition[Any] | None = None,
) -> ProcessReplay:
    return replay_records(
        correlation_id,
        records_for(config, correlation_id),
        registry or deployed_registry(config),
        verify=verify,
        until=until,
        definition=definition,
    )


# ---------------------------------------------------------------- every process

Progress = Callable[[int, int], None]  # (entries read, processes seen)


@dataclass
class VerifyReport:
    processes: int = 0
    events: int = 0  # entries folded (duplicates excluded)
    checked: int = 0  # applied entries re-decided
    differing: dict[str, list[Difference]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # correlation ID -> why it could not be replayed

    @property
    def ok(self) -> bool:
        return not self.differing and not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "events": self.events,
            "checked": self.checked,
            "differing": {cid: [d.to_json() for d in ds] for cid, ds in self.differing.items()},
            "errors": self.errors,
        }


def verify_all(
    config: Config, registry: Registry | None = None, *, progress: Progress | None = None
) -> VerifyReport:
    """`--verify` for every process in the journal (one pass, all partitions)."""
    registry = registry or deployed_registry(config)
    replayers: dict[str, Replayer] = {}
    report = VerifyReport()
    for n, record in enumerate(iter_journal(config), start=1):
        cid = record.entry.correlation_id
        replayer = replayers.get(cid)
        if replayer is None:
            replayer = replayers[cid] = Replayer(registry, verify=True)
        if cid not in report.errors:
            try:
                step = replayer.feed(record)
            except Exception as exc:  # one unreplayable process must not hide the others
                report.errors[cid] = f"{type(exc).__name__}: {exc}"
            else:
                if step.differences:
                    report.differing.setdefault(cid, []).extend(step.differences)
        if progress is not None:
            progress(n, len(replayers))
    report.processes = len(replayers)
    report.events = sum(r.events for r in replayers.values())
    report.checked = sum(r.checked for r in replayers.values())
    return report


# ---------------------------------------------------------------- what-if


def _route_label(event: Event) -> str:
    step = getattr(type(event), "STEP", None)
    attempt = getattr(event.payload, "attempt", None)
    return f"{event.type}({step}#{attempt})" if step is not None else event.type


def _steps_of(events: Iterable[Event]) -> set[str]:
    # "approval" counts as a step: asking a human is the costliest route change of all.
    steps = {str(s) for e in events if (s := getattr(type(e), "STEP", None)) is not None}
    return steps | {"approval" for e in events if e.type == "ApprovalRequested"}


@dataclass
class _Branch:
    route: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class WhatIfProcess:
    correlation_id: str
    recorded_status: str | None
    new_status: str | None
    new_reason: str | None
    recorded_route: tuple[str, ...]
    new_route: tuple[str, ...]
    steps_added: tuple[str, ...]  # steps that would now run
    steps_removed: tuple[str, ...]  # steps that would no longer run
    first_divergence: int | None  # index in the route where they part

    @property
    def route_changed(self) -> bool:
        return self.recorded_route != self.new_route

    @property
    def terminal_changed(self) -> bool:
        return self.recorded_status != self.new_status

    @property
    def differs(self) -> bool:
        return self.route_changed or self.terminal_changed

    def to_json(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "route_changed": self.route_changed,
            "terminal_changed": self.terminal_changed,
            "recorded_status": self.recorded_status,
            "new_status": self.new_status,
            "new_reason": self.new_reason,
            "recorded_route": list(self.recorded_route),
            "new_route": list(self.new_route),
            "steps_added": list(self.steps_added),
            "steps_removed": list(self.steps_removed),
            "first_divergence": self.first_divergence,
        }


@dataclass
class WhatIfReport:
    definition: str
    processes: int = 0
    events: int = 0
    skipped: int = 0  # processes of another definition name
    results: list[WhatIfProcess] = field(default_factory=list)  # only those that differ
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def route_changed(self) -> int:
        return sum(r.route_changed for r in self.results)

    @property
    def terminal_changed(self) -> Counter[tuple[str | None, str | None]]:
        return Counter((r.recorded_status, r.new_status) for r in self.results if r.terminal_changed)

    @property
    def steps_added(self) -> Counter[str]:
        return Counter(s for r in self.results for s in r.steps_added)

    @property
    def steps_removed(self) -> Counter[str]:
        return Counter(s for r in self.results for s in r.steps_removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "definition": self.definition,
            "processes": self.processes,
            "events": self.events,
            "skipped": self.skipped,
            "differing": len(self.results),
            "route_changed": self.route_changed,
            "terminal_changed": [
                {"recorded": old, "new": new, "count": n}
                for (old, new), n in sorted(self.terminal_changed.items(), key=str)
            ],
            "steps_added": dict(sorted(self.steps_added.items())),
            "steps_removed": dict(sorted(self.steps_removed.items())),
            "processes_differing": [r.to_json() for r in self.results],
            "errors": self.errors,
        }


class _WhatIf:
    """Two branches of one process: what the journal recorded, and what `definition` would decide."""

    def __init__(self, definition: ProcessDefinition[Any]) -> None:
        self.definition = definition
        self.state: ProcessState | None = None
        self.recorded = _Branch()
        self.new = _Branch()
        self.seen: set[str] = set()
        self.events = 0
        self.quarantine: Quarantine | None = None

    def feed(self, record: JournalRecord) -> None:
        event, p = record.event, record.entry.payload
        if event.event_id in self.seen:
            return
        self.seen.add(event.event_id)
        self.events += 1
        rec = _Recorded.of(record)
        for e in (*rec.commands, *rec.published):
            self.recorded.route.append(_route_label(e))
            self.recorded.events.append(e)
        self.recorded.status = p.status
        if self.state is None:
            self.state = self.definition.initial_state(event)
        runtime = _runtime_entry(
            self.definition, self.state, self.quarantine, record, decision_time(record.entry, event)
        )
        if runtime is not None:  # quarantine, parking, operator commands: the same under any definition
            self.state, self.quarantine, parked = runtime
            if parked:
                self.seen.discard(event.event_id)
            return
        # Entries the runtime refused outside `decide` (signatures, duplicates) stay refused.
        if p.outcome == "rejected":
            return
        outcome = evaluate(self.definition, self.state, event, now=decision_time(record.entry, event))
        if outcome.outcome == "applied" and outcome.decision is not None:
            decision = outcome.decision
            self.state = decision.state
            for e in (*decision.commands, *decision.publish):
                self.new.route.append(_route_label(e))
                self.new.events.append(e)
        elif outcome.outcome == "failed":
            self.state = self.state.model_copy(update={"status": Status.FAILED, "reason": outcome.reason})
        self.new.status = str(self.state.status)
        self.new.reason = self.state.reason

    def result(self, correlation_id: str) -> WhatIfProcess:
        old, new = self.recorded, self.new
        if new.status is None:  # only rejected entries: the new definition never moved either
            new.status = str(self.state.status) if self.state is not None else None
        old_steps, new_steps = _steps_of(old.events), _steps_of(new.events)
        divergence = next(
            (i for i, (a, b) in enumerate(zip(old.route, new.route, strict=False)) if a != b),
            None if len(old.route) == len(new.route) else min(len(old.route), len(new.route)),
        )
        return WhatIfProcess(
            correlation_id=correlation_id,
            recorded_status=old.status,
            new_status=new.status,
            new_reason=new.reason,
            recorded_route=tuple(old.route),
            new_route=tuple(new.route),
            steps_added=tuple(sorted(new_steps - old_steps)),
            steps_removed=tuple(sorted(old_steps - new_steps)),
            first_divergence=divergence,
        )


def what_if_records(
    records: Iterable[JournalRecord],
    definition: ProcessDefinition[Any],
    *,
    label: str | None = None,
    progress: Progress | None = None,
) -> WhatIfReport:
    """Replay `records` (any number of processes) against `definition` and report the differences."""
    report = WhatIfReport(definition=label or f"{definition.name} v{definition.version}")
    branches: dict[str, _WhatIf] = {}
    other: set[str] = set()
    for n, record in enumerate(records, start=1):
        cid = record.entry.correlation_id
        if record.entry.payload.process != definition.name:
            other.add(cid)
        elif cid not in report.errors:
            branch = branches.get(cid)
            if branch is None:
                branch = branches[cid] = _WhatIf(definition)
            try:
                branch.feed(record)
            except Exception as exc:  # e.g. initial_state refuses the input: report, keep going
                report.errors[cid] = f"{type(exc).__name__}: {exc}"
        if progress is not None:
            progress(n, len(branches) + len(other))
    report.processes = len(branches)
    report.skipped = len(other)
    report.events = sum(b.events for b in branches.values())
    for cid, branch in branches.items():
        if cid in report.errors:
            continue
        result = branch.result(cid)
        if result.differs:
            report.results.append(result)
    return report


def what_if(
    config: Config,
    definition: ProcessDefinition[Any],
    *,
    correlation_id: str | None = None,
    label: str | None = None,
    progress: Progress | None = None,
) -> WhatIfReport:
    """What-if over the whole journal (or one process)."""
    records = iter_journal(config) if correlation_id is None else records_for(config, correlation_id)
    return what_if_records(records, definition, label=label, progress=progress)


# ---------------------------------------------------------------- inspect


def timeline(records: Iterable[JournalRecord]) -> list[dict[str, Any]]:
    """Inputs with what each caused: commands (step, attempt), published events, timers."""
    rows: list[dict[str, Any]] = []
    for record in records:
        event, p = record.event, record.entry.payload
        base = {"offset": record.offset, "partition": record.partition}
        decided_at = decision_time(record.entry, event).isoformat()  # timers are scheduled then
        rows.append(
            {
                **base,
                "kind": "input",
                "type": event.type,
                "event_id": event.event_id,
                "occurred_at": event.occurred_at.isoformat(),
                "decided_at": decided_at,
                "topic": p.input_topic,
                "outcome": p.outcome,
                "reason": p.reason,
                "status": p.status,
            }
        )
        for kind, items in (("command", p.commands), ("published", p.published)):
            for raw in items:
                decided = decode(raw)
                rows.append(
                    {
                        **base,
                        "kind": kind,
                        **_event_json(decided),
                        "occurred_at": decided.occurred_at.isoformat(),
                    }
                )
        for spec in p.timers_scheduled:
            rows.append(
                {
                    **base,
                    "kind": "timer",
                    "type": "TimerScheduled",
                    "event_id": spec.timer_id,
                    "occurred_at": decided_at,
                    "name": spec.name,
                    "due_at": spec.due_at.isoformat(),
                }
            )
        for timer_id in p.timers_cancelled:
            rows.append(
                {
                    **base,
                    "kind": "timer",
                    "type": "TimerCancelled",
                    "event_id": timer_id,
                    "occurred_at": decided_at,
                }
            )
    return rows


def inspect_process(config: Config, correlation_id: str, registry: Registry | None = None) -> dict[str, Any]:
    """`pm inspect --json`: one object with correlation_id, status, process, state and the timeline."""
    records = list(records_for(config, correlation_id))
    if not records:
        raise ReplayError(f"no journal entries for correlation ID {correlation_id!r}")
    last = records[-1].entry.payload
    state: dict[str, Any] | None = None
    note: str | None = None
    try:
        replay = replay_records(correlation_id, records, registry or deployed_registry(config))
        state = _state_json(replay.state)
    except (ReplayError, RegistryError) as exc:  # the timeline stands without a deployed definition
        note = str(exc)
    return {
        "correlation_id": correlation_id,
        "status": last.status,
        "reason": (state or {}).get("reason", last.reason),
        "process": last.process,
        "version": last.process_version,
        "journal_partition": records[-1].partition,
        "journal_offset": records[-1].offset,
        "state": state,
        "state_note": note,
        "events": timeline(records),
    }


def _runtime_entry(
    definition: ProcessDefinition[Any],
    state: ProcessState,
    quarantine: Quarantine | None,
    record: JournalRecord,
    decided_at: datetime,
) -> tuple[ProcessState, Quarantine | None, bool] | None:
    """An entry the runtime decided, not `decide` (as `pm.fold.advance` folds it): the state, the
    quarantine and whether the input was parked after it; None for an entry `decide` made."""
    entry, event = record.entry, record.event
    p = entry.payload
    if p.outcome in ("parked", "quarantined"):
        parked_state, quarantine = park(state, quarantine, p.reason, (p.input_topic, bytes(p.event)))
        return parked_state, quarantine, True
    if not isinstance(event, OperatorCommand):
        return None
    if p.outcome != "applied":
        return state, quarantine, False
    process = ProcessRecord(
        entry.correlation_id, definition.name, int(definition.version), state, quarantine=quarantine
    )
    outcome = operate(definition, process, event, decided_at)
    if outcome.outcome == "applied" and outcome.decision is not None:
        return outcome.decision.state, None, False
    return state.model_copy(update={"status": Status.FAILED, "reason": outcome.reason}), None, False
