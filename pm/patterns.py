"""Building blocks for the rules of a process: steps with timeouts and retries, timers, fan-in, the end.

A process that runs steps (a command to `cmd.<step>`, a result back) keeps the same bookkeeping
in its state (`StepBookkeeping`: attempts, retries, pending command IDs, live timers) and writes
the same handful of moves over it. These helpers are those moves, pure like `decide`:

    fx = Effects(event, now)  # what this one decision produces
    state = issue(state, "lookup", build, timedelta(seconds=30), fx)  # the command + its timeout timer
    ...  # a later input, the result:
    if awaiting(state, step, result.payload.command_id):
        state = answered(state, step, fx)  # no longer pending, its timeout cancelled
    return fx.decision(state)

Each helper returns the next state and records in `fx` what to produce; none does I/O.
IDs are derived, so a replay derives them again: a command is `command_id(correlation_id, step,
attempt)`, a timer `derive_id(correlation_id, "timer", name, attempt)`. Timer names are
"<kind>:<step>" for the step timers (`TIMEOUT`, `RETRY`) and anything the process likes otherwise.
Step names are plain strings (a `StrEnum` member passes as one and is stored as its value).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, Self, TypeVar

from pydantic import Field

from pm.events import Event, TimerSpec, command_id, derive_id
from pm.process import Decision, ProcessState, Status

__all__ = [
    "TIMEOUT",
    "RETRY",
    "StepBookkeeping",
    "StepState",
    "StepBudgets",
    "Effects",
    "CommandFactory",
    "timer_id",
    "timer_name",
    "parse_timer",
    "set_timer",
    "cancel_timers",
    "take_timer",
    "set_reminder",
    "await_deadline",
    "issue",
    "awaiting",
    "answered",
    "timed_out",
    "spend_retry",
    "retry_later",
    "all_in",
    "finish",
    "escalate",
]

# Timer kinds of the step timers: "timeout:<step>" gives up on an attempt, "retry:<step>" issues the next.
TIMEOUT = "timeout"
RETRY = "retry"

S = TypeVar("S", bound=ProcessState)


class StepBookkeeping(Protocol):
    """The fields the helpers read and write, on a `ProcessState` (which also has `status` and `reason`,
    set by `finish`). The state may declare them wherever it likes; `StepState` is a ready base.

    Keys are step names (for timers: timer IDs); values are plain data, so the state stays JSON.
    """

    correlation_id: str
    attempts: dict[str, int]  # step -> last attempt issued
    retries: dict[str, int]  # step -> retries used
    pending: dict[str, str]  # step -> command_id awaiting its result
    timers: dict[str, str]  # live timer_id -> name; any other timer that fires is stale

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self: ...


B = TypeVar("B", bound=StepBookkeeping)


class StepState(ProcessState):
    """A ready `ProcessState` with the bookkeeping fields, for a new process to extend.

    (A state that already has stored JSON keeps declaring the fields itself, where they always were:
    inheriting them would move them to the front of the stored and inspected state.)
    """

    attempts: dict[str, int] = Field(default_factory=dict)
    retries: dict[str, int] = Field(default_factory=dict)
    pending: dict[str, str] = Field(default_factory=dict)
    timers: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class StepBudgets:
    """How long each step may take, how often it is retried, and the backoff between retries."""

    step_timeouts: Mapping[str, timedelta]
    max_retries: Mapping[str, int]  # retries after a timeout or a retryable failure (attempts = 1 + retries)
    retry_backoff: timedelta
    retry_backoff_max: timedelta

    def backoff(self, retry: int) -> timedelta:
        """`retry_backoff * 2**(retry-1)`, at most `retry_backoff_max`.

        No jitter: decide is deterministic (spread load in the step consumers instead).
        """
        return min(self.retry_backoff * 2 ** (retry - 1), self.retry_backoff_max)


# (command_id, attempt) -> the command to produce; it carries `Effects.envelope(command_id)`.
CommandFactory = Callable[[str, int], Event]


@dataclass
class Effects:
    """What one decision produces, gathered while the handlers compute the next state."""

    cause: Event
    now: datetime  # the decision time: produced events carry it, timers count from it
    commands: list[Event] = field(default_factory=list)
    publish: list[Event] = field(default_factory=list)
    schedule: list[TimerSpec] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)

    def envelope(self, event_id: str) -> dict[str, Any]:
        """Produced events: derived ID, caused by the input, stamped with the decision time."""
        return {
            "event_id": event_id,
            "correlation_id": self.cause.correlation_id,
            "causation_id": self.cause.event_id,
            "occurred_at": self.now,
        }

    def decision(self, state: S) -> Decision[S]:
        return Decision(
            state=state,
            commands=tuple(self.commands),
            publish=tuple(self.publish),
            schedule=tuple(self.schedule),
            cancel=tuple(self.cancel),
        )


# ---------------------------------------------------------------- timers


def timer_id(correlation_id: str, name: str, attempt: int) -> str:
    """The ID of timer `name` number `attempt`: a re-armed timer gets a new ID, so the old one is stale."""
    return derive_id(correlation_id, "timer", name, attempt)


def timer_name(kind: str, step: str) -> str:
    return f"{kind}:{step}"


def parse_timer(name: str) -> tuple[str, str]:
    """`"kind:step"` -> `(kind, step)`; a name without a step -> `(name, "")`."""
    kind, _, step = name.partition(":")
    return kind, step


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _scheduled(state: B, name: str, attempt: int, due_at: datetime, fx: Effects) -> dict[str, str]:
    """Schedule a durable timer; the live timers with it (the helpers below copy the state once)."""
    tid = timer_id(state.correlation_id, name, attempt)
    fx.schedule.append(TimerSpec(timer_id=tid, name=name, due_at=due_at))
    return {**state.timers, tid: name}


def _cancelled(state: B, fx: Effects, names: tuple[str, ...] | None) -> dict[str, str]:
    """Cancel live timers (those named, or all of them); the live timers left."""
    keep: dict[str, str] = {}
    for tid, name in state.timers.items():
        if names is None or name in names:
            fx.cancel.append(tid)
        else:
            keep[tid] = name
    return keep


def set_timer(state: B, name: str, attempt: int, due_at: datetime, fx: Effects) -> B:
    """Schedule a durable timer and remember it as live (only live timers act when they fire)."""
    return state.model_copy(update={"timers": _scheduled(state, name, attempt, due_at, fx)})


def cancel_timers(state: B, fx: Effects, *, names: tuple[str, ...] | None = None) -> B:
    """Cancel live timers (those named, or all of them)."""
    return state.model_copy(update={"timers": _cancelled(state, fx, names)})


def take_timer(state: B, fired_id: str, name: str) -> B | None:
    """A fired timer: the state without it if it was live, None if stale (cancelled, superseded, answered).

    Stale timers must change nothing: cancelling is best effort, a fire can race it.
    """
    if state.timers.get(fired_id) != name:
        return None
    return state.model_copy(update={"timers": _without(state.timers, fired_id)})


def set_reminder(state: B, name: str, n: int, due_at: datetime, deadline: datetime, fx: Effects) -> B:
    """Reminder `n` at `due_at`, unless the deadline comes first: reminders stop there, so they are bounded."""
    if due_at >= deadline:
        return state
    return set_timer(state, name, n, due_at, fx)


def await_deadline(
    state: B,
    deadline_name: str,
    attempt: int,
    deadline: datetime,
    fx: Effects,
    *,
    reminder_name: str,
    every: timedelta,
) -> B:
    """Wait for an outside answer until `deadline`, reminding `every` from now (the first reminder is 1).

    Re-arm each reminder when it fires: `set_reminder(state, reminder_name, n + 1, due_at + every, ...)`.
    """
    state = set_timer(state, deadline_name, attempt, deadline, fx)
    return set_reminder(state, reminder_name, 1, fx.now + every, deadline, fx)


# ---------------------------------------------------------------- steps


def issue(state: B, step: str, command: CommandFactory, timeout: timedelta, fx: Effects) -> B:
    """Issue the next attempt of `step` with a timeout timer; the attempt is pending until answered."""
    step = str(step)  # a StrEnum member: store its plain value
    attempt = state.attempts.get(step, 0) + 1
    cmd_id = command_id(state.correlation_id, step, attempt)
    fx.commands.append(command(cmd_id, attempt))
    timers = _scheduled(state, timer_name(TIMEOUT, step), attempt, fx.now + timeout, fx)
    return state.model_copy(
        update={
            "timers": timers,
            "attempts": {**state.attempts, step: attempt},
            "pending": {**state.pending, step: cmd_id},
        }
    )


def awaiting(state: StepBookkeeping, step: str, cmd_id: str) -> bool:
    """True for the answer to the pending attempt of `step`; an older attempt's late answer is False."""
    return state.pending.get(step) == cmd_id


def answered(state: B, step: str, fx: Effects) -> B:
    """The pending attempt of `step` answered: no longer pending, its timeout cancelled."""
    step = str(step)
    timers = _cancelled(state, fx, (timer_name(TIMEOUT, step),))
    return state.model_copy(update={"pending": _without(state.pending, step), "timers": timers})


def timed_out(state: B, step: str) -> B:
    """The pending attempt of `step` timed out: no longer pending, so its late answer is ignored."""
    return state.model_copy(update={"pending": _without(state.pending, str(step))})


def spend_retry(state: B, step: str, max_retries: int) -> B | None:
    """One more retry of `step`: the state with it counted, or None once the budget is spent."""
    step = str(step)
    used = state.retries.get(step, 0)
    if used >= max_retries:
        return None
    return state.model_copy(update={"retries": {**state.retries, step: used + 1}})


def retry_later(state: B, step: str, backoff: timedelta, fx: Effects) -> B:
    """Durable backoff: a "retry:<step>" timer; issue the next attempt when it fires (see `issue`)."""
    step = str(step)
    attempt = state.attempts[step] + 1  # the attempt the timer will issue: its ID is unique per retry
    return set_timer(state, timer_name(RETRY, step), attempt, fx.now + backoff, fx)


def all_in(*values: object) -> bool:
    """Fan in: True once every awaited value is there (not None), whichever arrived last."""
    return all(value is not None for value in values)


# ---------------------------------------------------------------- the end


def finish(state: B, status: str, reason: str | None, fx: Effects, **update: Any) -> B:
    """Terminal `status`: nothing pending, every live timer cancelled (`update` sets the process's own fields).

    `status` is a terminal `Status`, or an outcome the process names (a `Status` is a str).
    """
    timers = _cancelled(state, fx, None)
    return state.model_copy(update={"timers": timers, "status": status, "reason": reason, "pending": {}, **update})


def escalate(state: B, reason: str, fx: Effects, **update: Any) -> B:
    """Terminal `escalated`: a human takes over (the answer to whatever the rules do not cover)."""
    return finish(state, Status.ESCALATED, reason, fx, **update)
