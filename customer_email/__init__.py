"""The customer-service e-mail: the reference app, composed on pm's public API (`customer_email.app:APP`).

Modules: `events` (the e-mail, its steps' commands and results), `rules` (the process definition),
`guard` (the draft checks), `money` (normaliser and money/commitment detector), `addresses`
(parsed sender addresses), `conversation` (bounded excerpts of e-mails and of the thread),
`approval_request` (the draft as an approval proposal), `publisher`
(the upstream API), `demo`, and `app` (the composition root). The step handlers and dev services
are in `consumers/`.
"""

from __future__ import annotations

from typing import Any

from customer_email.rules import CUSTOMER_EMAIL, CustomerEmailProcess, EmailState
from pm.process import ProcessDefinition

__all__ = ["DEFINITIONS", "CUSTOMER_EMAIL", "CustomerEmailProcess", "EmailState", "definition"]

DEFINITIONS: tuple[ProcessDefinition[Any], ...] = (CUSTOMER_EMAIL,)


def definition(name: str) -> ProcessDefinition[Any]:
    """The deployed definition called `name` (KeyError when there is none)."""
    for d in DEFINITIONS:
        if d.name == name:
            return d
    raise KeyError(name)
