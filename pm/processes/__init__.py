"""The deployed process definitions; the runtime routes each new correlation ID to the one that `starts` it."""

from __future__ import annotations

from typing import Any

from pm.process import ProcessDefinition
from pm.processes.customer_email import CUSTOMER_EMAIL, CustomerEmailProcess, EmailState

__all__ = ["DEFINITIONS", "CUSTOMER_EMAIL", "CustomerEmailProcess", "EmailState", "definition"]

DEFINITIONS: tuple[ProcessDefinition[Any], ...] = (CUSTOMER_EMAIL,)


def definition(name: str) -> ProcessDefinition[Any]:
    """The deployed definition called `name` (KeyError when there is none)."""
    for d in DEFINITIONS:
        if d.name == name:
            return d
    raise KeyError(name)
