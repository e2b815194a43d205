"""The process definition API: a state model plus a pure `decide`.

`decide(state, event, now) -> Decision` must not touch Kafka, clocks or randomness:
`now` is the time the runtime decides the input (it records it in the journal
entry, so a replay passes the same value), `event.occurred_at` is when the
input happened; IDs come from `derive_id` / `command_id`.
The runtime owns all I/O; a definition is pure data and functions, so a new
process needs nothing from `pm/` internals (see tests for a second process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pm.events import Event, TimerSpec

__all__ = [
    "Status",
    "TERMINAL",
    "ACTIVE",
    "ProcessState",
    "Decision",
    "ProcessDefinition",
    "Upcaster",
    "InvalidInput",
]


class InvalidInput(ValueError):
    """Raised by `initial_state` for a start event that must not open a process (hostile or malformed).

    The runtime sends the record to the DLQ with this message as the reason; the partition keeps flowing.
    """


class Status(StrEnum):
    """The statuses the core knows. A process may end with any other outcome it names (e.g. "sent")."""

    RUNNING = "running"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    REJECTED = "rejected"
    ESCALATED = "escalated"
    FAILED = "failed"
    # Set by the runtime, never by `decide`: an input of this process kept its batch from committing;
    # its later inputs are parked until an operator releases it (`pm quarantine release`).
    QUARANTINED = "quarantined"


# A process is active while running or waiting for a human; every other status is terminal.
ACTIVE = frozenset({Status.RUNNING, Status.WAITING_FOR_APPROVAL})
TERMINAL = frozenset({Status.REJECTED, Status.ESCALATED, Status.FAILED})  # the core's; apps name others
_OUTCOME = r"^[a-z][a-z0-9_-]{0,39}$"


class ProcessState(BaseModel):
    """Base of every process state: frozen, with the fields the runtime and CLI rely on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str
    # A `Status`, or the outcome a process names when it ends (lower-case word: "sent", "credited").
    status: Annotated[Status | Annotated[str, StringConstraints(pattern=_OUTCOME)], Field(union_mode="left_to_right")] = (
        Status.RUNNING
    )
    reason: str | None = None  # why terminal (escalated / failed / rejected), for humans

    @property
    def terminal(self) -> bool:
        return self.status not in ACTIVE


S = TypeVar("S", bound=ProcessState)


@dataclass(frozen=True)
class Decision(Generic[S]):
    """What `decide` returns. `rejection` set means: the event is recorded but not applied (state unchanged)."""

    state: S
    commands: tuple[Event, ...] = ()  # produced to cmd.<step>
    publish: tuple[Event, ...] = ()  # produced to their own topic (e.g. approvals.requested)
    schedule: tuple[TimerSpec, ...] = ()
    cancel: tuple[str, ...] = ()  # timer IDs
    rejection: str | None = None


Upcaster = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class ProcessDefinition(Protocol[S]):
    """What the runtime needs from a process. Implement it as a module-level object."""

    name: str
    version: int
    state_type: type[S]
    # State upcasters keyed by the version they upgrade *from*: a process that started on
    # version v keeps deciding with `version` once upcasters v -> v+1 -> ... exist.
    upcasters: Mapping[int, Upcaster]

    def starts(self, event: Event) -> bool:
        """True when `event` opens a new process of this kind (for an unknown correlation ID)."""
        ...

    def initial_state(self, event: Event) -> S:
        """The state before the starting event is decided; `InvalidInput` refuses the event (DLQ).

        A definition may also have `admit(event) -> None`, raising `InvalidInput`: the runtime calls
        it for live start-type events only (also for a process that exists: a follow-up), never when
        it folds the journal, so checks added later do not break the rebuild of processes an older
        build admitted.

        And `resume(state, command, now) -> Decision`: what `pm resume ID` (an `OperatorCommand`)
        makes of a running process that is stuck, typically its pending steps issued again. Pure,
        like `decide`; without it the command is refused and the operator escalates instead.
        """
        ...

    def decide(self, state: S, event: Event, now: datetime) -> Decision[S]:
        """Pure: no I/O, no clock, no randomness.

        `now` is when the PM decides this input (UTC, millisecond precision): count timeouts of the
        commands issued here from it, not from `event.occurred_at`, or an input that waited in
        Kafka (backpressure, an outage) starts with its timers already expired.
        """
        ...
