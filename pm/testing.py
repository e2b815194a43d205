"""Test kit for process definitions: run one without Kafka, and check the rules replay relies on.

    trace = run_definition(MY_PROCESS, [started, result_1, result_2])
    trace = fire_due(MY_PROCESS, trace, until=started.occurred_at + timedelta(hours=1))
    assert trace.state.status is Status.ESCALATED and trace.commands_of(Deliver) == ()

`run_definition` / `feed` decide inputs the way the runtime does: the first input must start the
process, an input whose `event_id` was already seen is ignored (dedupe), a rejected decision keeps
the old state (and must not change it), timers live from the decision that schedules them until
one cancels them, they fire, or the process ends. Exceptions from `decide` propagate: in a test a
bug should fail loudly, where the runtime would mark the process failed.

The contract checks (each raises `AssertionError` whose message starts with the rule's name):

- `assert_deterministic` ("determinism"): a second fresh run, and a run that JSON round-trips the
  state before every decision, decide exactly as the first run (replay and restarts rely on it).
- `check_derived_ids` ("derived IDs"): produced event IDs, command IDs and timer IDs are equal in
  two runs, none looks like a uuid4, and no produced event ID repeats within a trace.
- `check_no_clock` ("no clock"), two probes. (1) Moving every input time and every `now` by
  `CLOCK_SHIFT` (whole weeks, so weekdays and times of day stay) moves every time in every
  decision by exactly that much and changes nothing else (IDs, commands, statuses): a wall-clock
  read or an ID derived from a time shows up. Timestamps written into text (e.g. a reason) must
  move too; epoch numbers may move by the shift in seconds or ms. (2) Each input that schedules
  timers (not a `TimerFired`: a timer chain may count from its due time), decided again `LATE`
  later from the same state, schedules the same timers exactly `LATE` later, and otherwise only
  keeps or moves times by `LATE`: catches timeouts counted from `occurred_at` instead of `now`.
- `check_terminal_absorbs` ("terminal absorbs"): once a scenario ends in a terminal state, every
  input fed again (new event IDs) and every timer fired again (plus one never scheduled) produces
  no command, publishes nothing, schedules nothing and keeps the status. Vacuous otherwise.
- `check_timers_handled` ("timers handled"): after each input, firing each timer scheduled so far
  never raises; a stale one (cancelled, fired, or the process ended) changes nothing.
- `check_json_round_trip` ("JSON round trip"): every state loads back equal from its JSON.

`DefinitionContract` runs all of them over a definition's scenarios from its test module.
This module imports only `pm.events` and `pm.process`: `pm.journal` would bring in the Kafka
client, so the few lines of its `advance` that keep timers are mirrored here (a test compares).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeAlias, TypeVar

from pm.events import Event, TimerFired, TimerPayload, TimerSpec, derive_id, utc_ms
from pm.process import Decision, ProcessDefinition, ProcessState

__all__ = [
    "Now",
    "CLOCK_SHIFT",
    "LATE",
    "Trace",
    "run_definition",
    "feed",
    "fire_due",
    "timer_fired",
    "assert_deterministic",
    "check_derived_ids",
    "check_no_clock",
    "check_terminal_absorbs",
    "check_timers_handled",
    "check_json_round_trip",
    "check_definition",
    "DefinitionContract",
]

S = TypeVar("S", bound=ProcessState)
E = TypeVar("E", bound=Event)

# The decision time per input: a fixed time, a function of the input, or None (its `occurred_at`).
Now: TypeAlias = datetime | Callable[[Event], datetime] | None

# Whole weeks: rules that look at the weekday or the time of day decide the same after the shift.
CLOCK_SHIFT = timedelta(weeks=1000)
# How late `check_no_clock` decides an input a second time: odd, so it cannot match a budget by chance.
LATE = timedelta(minutes=37, seconds=11)

_MAX_FIRINGS = 10_000  # fire_due gives up on a definition that keeps scheduling due timers


# ---------------------------------------------------------------- the trace


@dataclass(frozen=True)
class Trace(Generic[S]):
    """What a run decided. `inputs`, `decided_at`, `states` and `decisions` are aligned per input."""

    inputs: tuple[Event, ...]
    decided_at: tuple[datetime, ...]  # the `now` each input was decided with
    states: tuple[S, ...]  # after each input
    decisions: tuple[Decision[S] | None, ...]  # None: a duplicate event ID, ignored like the runtime does
    commands: tuple[Event, ...]  # of applied decisions, in order
    published: tuple[Event, ...]
    scheduled: tuple[TimerSpec, ...]
    cancelled: tuple[str, ...]
    rejections: tuple[tuple[int, str], ...]  # (input index, reason)
    pending: tuple[TimerSpec, ...]  # timers still live at the end, in due order

    @property
    def state(self) -> S:
        """The final state."""
        return self.states[-1]

    @property
    def correlation_id(self) -> str:
        return self.state.correlation_id

    def commands_of(self, kind: type[E]) -> tuple[E, ...]:
        return tuple(c for c in self.commands if isinstance(c, kind))

    def last_command(self) -> Event:
        assert self.commands, f"no command was issued ({len(self.inputs)} inputs decided)"
        return self.commands[-1]


class _Runner(Generic[S]):
    """Mutable twin of `Trace` while inputs are decided; `trace()` freezes it."""

    def __init__(self, definition: ProcessDefinition[S], start: Trace[S] | None, *, round_trip: bool) -> None:
        self.definition = definition
        self.round_trip = round_trip  # JSON round-trip the state before each decision (as a restart would)
        self.inputs = list(start.inputs) if start else []
        self.decided_at = list(start.decided_at) if start else []
        self.states = list(start.states) if start else []
        self.decisions = list(start.decisions) if start else []
        self.commands = list(start.commands) if start else []
        self.published = list(start.published) if start else []
        self.scheduled = list(start.scheduled) if start else []
        self.cancelled = list(start.cancelled) if start else []
        self.rejections = list(start.rejections) if start else []
        self.pending = {t.timer_id: t for t in start.pending} if start else {}
        self.seen = {e.event_id for e in self.inputs}

    @property
    def state(self) -> S:
        return self.states[-1]

    def _state_for(self, index: int, event: Event) -> S:
        if not self.states:
            assert self.definition.starts(event), (
                f"input #{index} ({event.type}) does not start a {self.definition.name} process: "
                "the first input must (definition.starts)"
            )
            return self.definition.initial_state(event)
        assert event.correlation_id == self.state.correlation_id, (
            f"input #{index} ({event.type}) has correlation ID {event.correlation_id!r}, the process "
            f"{self.state.correlation_id!r}: a trace follows one process"
        )
        return self.state

    def feed(self, event: Event, now: datetime) -> Decision[S] | None:
        """Decide one input like the runtime; None when it is a duplicate (ignored)."""
        index = len(self.inputs)
        state = self._state_for(index, event)
        decision = None if event.event_id in self.seen else self._decide(index, state, event, now)
        self.seen.add(event.event_id)
        after = state if decision is None or decision.rejection is not None else decision.state
        if isinstance(event, TimerFired) and decision is not None:
            self.pending.pop(event.payload.timer_id, None)  # fired: no longer pending, whatever decide did
        if after.terminal:
            self.pending.clear()  # a finished process has nothing left to wake up for
        self.inputs.append(event)
        self.decided_at.append(now)
        self.states.append(after)
        self.decisions.append(decision)
        return decision

    def _decide(self, index: int, state: S, event: Event, now: datetime) -> Decision[S]:
        if self.round_trip:
            state = _round_trip(self.definition, state)
        decision = self.definition.decide(state, event, now)
        _check_decision(self.definition, index, event, state, decision)
        if decision.rejection is not None:
            self.rejections.append((index, decision.rejection))
            return decision
        self.commands.extend(decision.commands)
        self.published.extend(decision.publish)
        self.scheduled.extend(decision.schedule)
        self.cancelled.extend(decision.cancel)
        for timer_id in decision.cancel:  # cancels first, then schedules: as the runtime does
            self.pending.pop(timer_id, None)
        self.pending.update({t.timer_id: t for t in decision.schedule})
        return decision

    def next_due(self, until: datetime) -> TimerSpec | None:
        due = [t for t in self.pending.values() if t.due_at <= until]
        return min(due, key=_due_order) if due else None

    def trace(self) -> Trace[S]:
        return Trace(
            inputs=tuple(self.inputs),
            decided_at=tuple(self.decided_at),
            states=tuple(self.states),
            decisions=tuple(self.decisions),
            commands=tuple(self.commands),
            published=tuple(self.published),
            scheduled=tuple(self.scheduled),
            cancelled=tuple(self.cancelled),
            rejections=tuple(self.rejections),
            pending=tuple(sorted(self.pending.values(), key=_due_order)),
        )


def _due_order(spec: TimerSpec) -> tuple[datetime, str]:
    return spec.due_at, spec.timer_id


def _check_decision(
    definition: ProcessDefinition[S], index: int, event: Event, state: S, decision: Decision[S]
) -> None:
    where = f"input #{index} ({event.type})"
    assert isinstance(decision, Decision), f"decide returned a {type(decision).__name__} for {where}"
    assert isinstance(decision.state, definition.state_type), (
        f"decide returned a {type(decision.state).__name__} state for {where}, "
        f"not a {definition.state_type.__name__}"
    )
    assert decision.state.correlation_id == state.correlation_id, f"{where} changed the correlation ID"
    if decision.rejection is not None:
        assert decision.state == state, (
            f"{where} was rejected ({decision.rejection!r}) but the decision changes the state: the runtime "
            "keeps the old state for a rejected input, so return the state unchanged"
        )


def _round_trip(definition: ProcessDefinition[S], state: S) -> S:
    return definition.state_type.model_validate_json(state.model_dump_json())


# ---------------------------------------------------------------- running


def _clock(now: Now) -> Callable[[Event], datetime]:
    if now is None:
        return lambda event: event.occurred_at
    if isinstance(now, datetime):
        fixed = utc_ms(now)
        return lambda event: fixed
    return lambda event: utc_ms(now(event))  # the runtime's clock is UTC, millisecond precision


def _times(inputs: Sequence[Event], now: Now) -> list[datetime]:
    clock = _clock(now)
    return [clock(event) for event in inputs]


def _run(
    definition: ProcessDefinition[S],
    inputs: Sequence[Event],
    times: Sequence[datetime],
    *,
    start: Trace[S] | None = None,
    round_trip: bool = False,
) -> Trace[S]:
    runner = _Runner(definition, start, round_trip=round_trip)
    for event, now in zip(inputs, times, strict=True):
        runner.feed(event, now)
    return runner.trace()


def run_definition(definition: ProcessDefinition[S], inputs: Iterable[Event], *, now: Now = None) -> Trace[S]:
    """Decide `inputs` from a fresh process (the first input starts it) and return what happened."""
    events = list(inputs)
    assert events, "run_definition needs at least the input that starts the process"
    return _run(definition, events, _times(events, now))


def feed(
    definition: ProcessDefinition[S], trace: Trace[S], inputs: Iterable[Event], *, now: Now = None
) -> Trace[S]:
    """Continue `trace` with more inputs (e.g. after `fire_due`)."""
    events = list(inputs)
    return _run(definition, events, _times(events, now), start=trace)


def timer_fired(spec: TimerSpec, correlation_id: str, *, event_id: str | None = None) -> TimerFired:
    """The `TimerFired` the runtime produces for `spec`: derived event ID, happening at its due time."""
    return TimerFired(
        event_id=event_id or derive_id(spec.timer_id, "fired"),
        correlation_id=correlation_id,
        causation_id=spec.timer_id,
        occurred_at=spec.due_at,
        payload=TimerPayload(timer_id=spec.timer_id, name=spec.name, due_at=spec.due_at),
    )


def fire_due(
    definition: ProcessDefinition[S], trace: Trace[S], until: datetime, *, now: Now = None
) -> Trace[S]:
    """Fire the live timers due at or before `until`, earliest first, including ones scheduled on the way.

    Each is decided at `now` (default: its due time, as if the runtime noticed it at once).
    """
    runner = _Runner(definition, trace, round_trip=False)
    clock, limit = _clock(now), utc_ms(until)
    for _ in range(_MAX_FIRINGS):
        spec = runner.next_due(limit)
        if spec is None:
            return runner.trace()
        event = timer_fired(spec, trace.correlation_id)
        runner.feed(event, clock(event))
    raise AssertionError(
        f"fire_due: more than {_MAX_FIRINGS} timers due by {limit.isoformat()}: a timer loop?"
    )


# ---------------------------------------------------------------- comparing decisions


def _dump_event(event: Event) -> dict[str, Any]:
    return {"class": type(event).__name__, **event.model_dump()}


def _dump(decision: Decision[Any] | None) -> Any:
    """A decision as plain data (times stay datetimes), for a readable first difference."""
    if decision is None:
        return None
    return {
        "state": decision.state.model_dump(),
        "commands": [_dump_event(c) for c in decision.commands],
        "publish": [_dump_event(p) for p in decision.publish],
        "schedule": [t.model_dump() for t in decision.schedule],
        "cancel": list(decision.cancel),
        "rejection": decision.rejection,
    }


def _equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and bool(a == b)


def _diff(a: Any, b: Any, same: Callable[[Any, Any], bool] = _equal, path: str = "decision") -> str | None:
    """Where `a` and `b` first differ (None: nowhere); leaves are compared with `same`."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return f"{path}.{key} is missing on one side"
            found = _diff(a[key], b[key], same, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path} is {_short(a)} vs {_short(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _diff(x, y, same, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if same(a, b) else f"{path} is {_short(a)} vs {_short(b)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


def _compare_runs(rule: str, first: Trace[Any], other: Trace[Any], same: Callable[[Any, Any], bool]) -> None:
    for index, (a, b) in enumerate(zip(first.decisions, other.decisions, strict=True)):
        found = _diff(_dump(a), _dump(b), same)
        if found:
            raise AssertionError(f"{rule} input #{index} ({first.inputs[index].type}): {found}")


def _applied(trace: Trace[S]) -> Iterable[tuple[int, Decision[S]]]:
    for index, decision in enumerate(trace.decisions):
        if decision is not None and decision.rejection is None:
            yield index, decision


# ---------------------------------------------------------------- the checks


def assert_deterministic(
    definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None
) -> Trace[S]:
    """Two fresh runs, and one with every state JSON round-tripped, decide identically; returns the first."""
    times = _times(inputs, now)
    first = _run(definition, inputs, times)
    again = _run(definition, inputs, times)
    _compare_runs("determinism: a second run decides differently at", first, again, _equal)
    loaded = _run(definition, inputs, times, round_trip=True)
    _compare_runs(
        "determinism: the state loaded back from JSON decides differently at", first, loaded, _equal
    )
    return first


def _ids(trace: Trace[Any]) -> list[tuple[str, str | None]]:
    """Every ID a run produced, labelled where it came from, in order."""
    found: list[tuple[str, str | None]] = []
    for index, decision in _applied(trace):
        where = f"input #{index} ({trace.inputs[index].type})"
        for kind, event in [
            *(("command", c) for c in decision.commands),
            *(("published", p) for p in decision.publish),
        ]:
            label = f"{where} {kind} {event.type}"
            found += [(f"{label} event_id", event.event_id), (f"{label} causation_id", event.causation_id)]
            found.append((f"{label} correlation_id", event.correlation_id))
            command_id = getattr(event.payload, "command_id", None)
            if command_id is not None:
                found.append((f"{label} payload.command_id", str(command_id)))
        found += [(f"{where} timer {t.name}", t.timer_id) for t in decision.schedule]
        found += [(f"{where} cancel", timer_id) for timer_id in decision.cancel]
    return found


def _looks_like_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


def check_derived_ids(definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None) -> None:
    """IDs are derived (derive_id / command_id): equal in two runs, no uuid4, event IDs unique."""
    times = _times(inputs, now)
    first, second = _ids(_run(definition, inputs, times)), _ids(_run(definition, inputs, times))
    hint = "derive IDs from the correlation ID, step and attempt (derive_id / command_id)"
    # Causation and correlation IDs quote the inputs' IDs, which upstream may well make with uuid4.
    inputs_ids = {e.event_id for e in inputs} | {e.correlation_id for e in inputs}
    for where, value in first:
        if value and value not in inputs_ids and _looks_like_uuid4(value):
            raise AssertionError(f"derived IDs: {where} {value} looks like a uuid4: {hint}")
    for (where, a), (_, b) in zip(first, second, strict=False):
        if a != b:
            raise AssertionError(f"derived IDs: {where} is {a} in one run and {b} in another: {hint}")
    if len(first) != len(second):
        raise AssertionError(f"derived IDs: two runs produced {len(first)} and {len(second)} IDs")
    owners: dict[str, str] = {}
    for where, value in first:
        if where.endswith(" event_id") and value is not None:
            if value in owners:
                raise AssertionError(f"derived IDs: {where} {value} repeats {owners[value]}: {hint}")
            owners[value] = where


def _shift(value: Any, delta: timedelta) -> Any:
    if isinstance(value, datetime):
        return value + delta
    if isinstance(value, dict):
        return {k: _shift(v, delta) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_shift(v, delta) for v in value)
    return value


def _shift_event(event: E, delta: timedelta) -> E:
    return type(event).model_validate(_shift(event.model_dump(), delta))


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}([T ])\d{2}:\d{2}(:\d{2}(\.\d{3}|\.\d{6})?)?(Z|[+-]\d{2}:\d{2})?")


def _timespec(seconds: str | None, fraction: str | None) -> str:
    if seconds is None:
        return "minutes"
    if not fraction:
        return "seconds"
    return "milliseconds" if len(fraction) == 4 else "microseconds"


def _shift_text(text: str, delta: timedelta) -> str:
    """`text` with every ISO timestamp in it moved by `delta`, written the same way."""

    def moved(match: re.Match[str]) -> str:
        value = datetime.fromisoformat(match.group(0)) + delta
        written = value.isoformat(sep=match.group(1), timespec=_timespec(match.group(2), match.group(3)))
        return written.replace("+00:00", "Z") if match.group(4) == "Z" else written

    return _ISO.sub(moved, text)


def _moved_by(delta: timedelta, *, may_stay: bool = False) -> Callable[[Any, Any], bool]:
    """Leaf equality for `check_no_clock`: times moved by `delta` (or unmoved, if `may_stay`), the rest equal."""
    seconds = delta.total_seconds()

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, datetime) and isinstance(b, datetime):
            return b == a + delta or (may_stay and a == b)
        if isinstance(a, str) and isinstance(b, str):
            return a == b or _shift_text(a, delta) == b
        if isinstance(a, bool) or isinstance(b, bool):
            return _equal(a, b)
        if isinstance(a, int | float) and isinstance(b, int | float):
            return a == b or any(abs((b - a) - s) < 1e-3 for s in (seconds, seconds * 1000))  # epoch s / ms
        return _equal(a, b)

    return same


def _check_shifted_world(
    definition: ProcessDefinition[S], inputs: Sequence[Event], times: list[datetime]
) -> None:
    first = _run(definition, inputs, times)
    moved = _run(definition, [_shift_event(e, CLOCK_SHIFT) for e in inputs], [t + CLOCK_SHIFT for t in times])
    try:
        _compare_runs(
            f"no clock: with inputs and `now` moved by {CLOCK_SHIFT}, at",
            first,
            moved,
            _moved_by(CLOCK_SHIFT),
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc} (expected every time moved by {CLOCK_SHIFT} and nothing else changed: take time only from "
            "`now` and the inputs, never the wall clock, and derive no ID from a time)"
        ) from None


def _check_late_input(
    definition: ProcessDefinition[S], trace: Trace[S], index: int, decision: Decision[S]
) -> None:
    """Decide input #`index` again `LATE` later: its timers move by exactly that, the rest may only keep or move."""
    event = trace.inputs[index]
    before = trace.states[index - 1] if index else definition.initial_state(event)
    late = definition.decide(before, event, trace.decided_at[index] + LATE)
    where = f"no clock: input #{index} ({event.type}) decided {LATE} later"
    for on_time, delayed in zip(decision.schedule, late.schedule, strict=False):
        if delayed.due_at != on_time.due_at + LATE:
            raise AssertionError(
                f"{where} schedules {on_time.name!r} at {delayed.due_at.isoformat()}, expected "
                f"{(on_time.due_at + LATE).isoformat()}: count timeouts from `now`, not from the input's "
                "occurred_at or the wall clock"
            )
    found = _diff(_dump(decision), _dump(late), _moved_by(LATE, may_stay=True))
    if found:
        raise AssertionError(f"{where} decides differently: {found}")


def check_no_clock(definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None) -> None:
    """Time comes only from `now` and the inputs (see the module docstring for exactly what is checked)."""
    times = _times(inputs, now)
    _check_shifted_world(definition, inputs, times)
    trace = _run(definition, inputs, times)
    for index, decision in _applied(trace):
        # A timer chain (e.g. reminders) may count from the fired timer's due time, not from `now`.
        if decision.schedule and not isinstance(trace.inputs[index], TimerFired):
            _check_late_input(definition, trace, index, decision)


def _late_inputs(trace: Trace[Any]) -> list[Event]:
    """Every input again under a new event ID, every scheduled timer fired again, and one never scheduled."""
    cid = trace.correlation_id
    again = [e.model_copy(update={"event_id": derive_id(e.event_id, "late")}) for e in trace.inputs]
    never = TimerSpec(
        timer_id=derive_id(cid, "never-scheduled"), name="never-scheduled", due_at=max(trace.decided_at)
    )
    fired = [timer_fired(t, cid, event_id=derive_id(t.timer_id, "late")) for t in (*trace.scheduled, never)]
    return again + fired


def check_terminal_absorbs(
    definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None
) -> None:
    """After a terminal state, late inputs and stale timers produce nothing and keep the status."""
    trace = run_definition(definition, inputs, now=now)
    if not trace.state.terminal:
        return  # the scenario leaves the process running: nothing to absorb
    status, late_now = trace.state.status, max(trace.decided_at)  # late: after everything else
    runner = _Runner(definition, trace, round_trip=False)
    for event in _late_inputs(trace):
        decision = runner.feed(event, late_now)
        if decision is None or decision.rejection is not None:
            continue
        produced = [o.type for o in (*decision.commands, *decision.publish)]
        produced += [f"timer {t.name}" for t in decision.schedule]
        if produced or runner.state.status != status:
            raise AssertionError(
                f"terminal absorbs: the process is {status}, yet a late {event.type} "
                f"produced {produced or 'nothing'} and left it {runner.state.status}: "
                "a terminal state must ignore (or reject) every input"
            )


def _probe_timer(
    definition: ProcessDefinition[S], runner: _Runner[S], spec: TimerSpec, after: int, now: Now
) -> None:
    """Fire `spec` against the state after input #`after` (without recording it)."""
    state, stale = runner.state, spec.timer_id not in runner.pending
    event = timer_fired(spec, state.correlation_id)
    where = f"{'stale' if stale else 'live'} timer {spec.name!r} ({spec.timer_id}) after input #{after}"
    try:
        decision = definition.decide(state, event, _clock(now)(event))
    except Exception as exc:
        raise AssertionError(
            f"timers handled: firing {where} raised {type(exc).__name__}: {exc} "
            "(decide must handle every timer it schedules and ignore stale ones)"
        ) from exc
    _check_decision(definition, after + 1, event, state, decision)
    if stale and decision.rejection is None:
        outputs = (*decision.commands, *decision.publish, *decision.schedule, *decision.cancel)
        if decision.state != state or outputs:
            raise AssertionError(
                f"timers handled: firing {where} changed the state or produced {len(outputs)} outputs"
            )


def check_timers_handled(
    definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None
) -> None:
    """After each input, every timer scheduled so far can fire: live ones without raising, stale ones as no-ops."""
    runner = _Runner(definition, None, round_trip=False)
    known: dict[str, TimerSpec] = {}
    for index, (event, at) in enumerate(zip(inputs, _times(inputs, now), strict=True)):
        decision = runner.feed(event, at)
        if decision is not None and decision.rejection is None:
            known.update({t.timer_id: t for t in decision.schedule})
        for spec in known.values():
            _probe_timer(definition, runner, spec, index, now)


def check_json_round_trip(
    definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None
) -> None:
    """Every state of the run loads back equal from its JSON (the store and journal folds keep JSON)."""
    trace = run_definition(definition, inputs, now=now)
    for index, state in enumerate(trace.states):
        where = f"JSON round trip: the state after input #{index} ({trace.inputs[index].type})"
        try:
            loaded = _round_trip(definition, state)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise AssertionError(f"{where} does not load back: {exc}") from exc
        if loaded != state:
            found = _diff(state.model_dump(), loaded.model_dump(), path="state") or f"{state!r} vs {loaded!r}"
            raise AssertionError(f"{where} loads back different: {found}")


_CHECKS: tuple[Callable[..., object], ...] = (
    assert_deterministic,
    check_derived_ids,
    check_no_clock,
    check_terminal_absorbs,
    check_timers_handled,
    check_json_round_trip,
)


def check_definition(definition: ProcessDefinition[S], inputs: Sequence[Event], *, now: Now = None) -> None:
    """Every contract check on one scenario."""
    for check in _CHECKS:
        check(definition, inputs, now=now)


# ---------------------------------------------------------------- the contract suite


class DefinitionContract:
    """Subclass as `TestMyProcessContract` in a test module; pytest collects the `test_` methods.

    Override `definition()` and `scenarios()` (each a full input sequence, the first input starting
    the process) and, if inputs are not decided at their `occurred_at`, `decision_time()`.
    The hooks raise instead of being `abc` abstract methods: pytest silently skips abstract classes,
    so a subclass that forgot one would pass without testing anything.
    """

    def definition(self) -> ProcessDefinition[Any]:
        raise NotImplementedError(f"{type(self).__name__}.definition() must return the definition under test")

    def scenarios(self) -> list[list[Event]]:
        raise NotImplementedError(f"{type(self).__name__}.scenarios() must return input sequences")

    def decision_time(self) -> Now:
        return None

    def _each(self, check: Callable[..., object]) -> None:
        scenarios = self.scenarios()
        assert scenarios, f"{type(self).__name__}.scenarios() returned no scenario"
        for number, inputs in enumerate(scenarios):
            try:
                check(self.definition(), inputs, now=self.decision_time())
            except AssertionError as exc:
                raise AssertionError(f"scenario #{number}: {exc}") from exc

    def test_deterministic(self) -> None:
        self._each(assert_deterministic)

    def test_derived_ids(self) -> None:
        self._each(check_derived_ids)

    def test_no_clock(self) -> None:
        self._each(check_no_clock)

    def test_terminal_absorbs_late_inputs(self) -> None:
        self._each(check_terminal_absorbs)

    def test_every_timer_handled(self) -> None:
        self._each(check_timers_handled)

    def test_state_json_round_trip(self) -> None:
        self._each(check_json_round_trip)
