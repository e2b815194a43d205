"""Operators' commands on one process: release a quarantine, resume a stuck process, escalate it.

A command is an ordinary input of the PM (`OperatorCommand` on `pm.operator`, keyed by the
correlation ID like every input), so it is journaled and replayed like any decision; the core
decides it (`pm.fold.operate`), not the process definition. Only operations tools may write the
topic (`pm acls`).
"""

from __future__ import annotations

import getpass
import uuid
from datetime import UTC, datetime

from pm.client import Delivery, Publisher
from pm.config import Config
from pm.errors import PmError
from pm.events import OperatorCommand, OperatorCommandPayload

__all__ = ["OPERATOR_TOPIC", "OperatorError", "operator_command", "send_operator_command"]

OPERATOR_TOPIC = OperatorCommand.TOPIC


class OperatorError(PmError, ValueError):
    """An operator command that cannot be sent as asked."""


def operator_command(
    correlation_id: str, action: str, *, operator: str | None = None, note: str = ""
) -> OperatorCommand:
    """The event for `action` (release | resume | escalate) on one process."""
    if action not in ("release", "resume", "escalate"):
        raise OperatorError(f"unknown operator action {action!r}; one of release, resume, escalate")
    if not correlation_id or len(correlation_id) > 998 or any(ord(c) < 32 for c in correlation_id):
        raise OperatorError("a correlation ID is 1 to 998 characters without control characters")
    who = operator or _user()
    try:
        payload = OperatorCommandPayload(action=action, operator=who, note=note)  # type: ignore[arg-type]
    except ValueError as exc:
        raise OperatorError(f"operator command refused: {exc}") from exc
    return OperatorCommand(
        event_id=str(uuid.uuid4()),
        correlation_id=correlation_id,
        occurred_at=datetime.now(UTC),
        payload=payload,
    )


def send_operator_command(
    config: Config, correlation_id: str, action: str, *, operator: str | None = None, note: str = ""
) -> Delivery:
    """Publish one operator command; the PM decides it and the journal records the outcome."""
    command = operator_command(correlation_id, action, operator=operator, note=note)
    with Publisher(config, role="operator") as publisher:
        return publisher.publish(command)


def _user() -> str:
    try:
        return getpass.getuser() or "operator"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "operator"
