"""The contract between the step-consumer base and each step's handler."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, TypeVar

from pm.errors import PmError
from pm.events import Event, LlmCall, ResultPayload, StepFailed, StepFailedPayload, derive_id

__all__ = ["StepHandler", "TransientError", "PermanentError", "result_event", "failed_result"]


class TransientError(PmError):
    """Worth retrying (timeouts, HTTP 429/5xx, connection refused): the base retries with backoff."""


class PermanentError(PmError):
    """Retrying will not help (bad input, schema-violating model output): reported as a failed result."""

    def __init__(self, reason: str, errors: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []


class StepHandler(Protocol):
    """One step's business logic. `handle` may block on I/O; the base runs it in a worker thread."""

    step: str  # the step name the app declares (StepSpec.name)

    def handle(self, command: Event, now: datetime) -> Event:
        """Return the result event (use `result_event`); raise TransientError / PermanentError."""
        ...


R = TypeVar("R", bound=Event)


def result_event(command: Event, result_type: type[R], payload: ResultPayload, now: datetime) -> R:
    """The result of `command`: same correlation ID, caused by the command, ID derived from it."""
    return result_type(
        event_id=derive_id(command.event_id, "result"),
        correlation_id=command.correlation_id,
        causation_id=command.event_id,
        occurred_at=now,
        payload=payload,
    )


def failed_result(
    command: Event,
    step: str,
    now: datetime,
    *,
    reason: str,
    retryable: bool,
    errors: list[str] | None = None,
    uncertain: bool = False,
    llm: LlmCall | None = None,
) -> StepFailed:
    """The failed result of `command`; `llm` records the model call when the model's output was the problem."""
    payload = command.payload
    return result_event(
        command,
        StepFailed,
        StepFailedPayload(
            command_id=payload.command_id,
            attempt=payload.attempt,
            step=str(step),
            retryable=retryable,
            uncertain=uncertain,
            reason=reason,
            errors=errors or [],
            llm=llm,
        ),
        now,
    )
