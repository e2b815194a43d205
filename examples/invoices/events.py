"""The invoice app's events: a start event on its own topic, one command and its result, and the
credit note a reviewer approves (the proposal of its `ApprovalRequested`, not an event itself)."""

from __future__ import annotations

from pydantic import Field

from pm.events import Command, CommandPayload, Event, Model, Result, ResultPayload, event_type

__all__ = [
    "Dispute",
    "InvoiceDisputed",
    "CheckInvoice",
    "CheckInvoicePayload",
    "InvoiceChecked",
    "InvoiceCheckedPayload",
    "CreditNote",
]


class Dispute(Model):
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str = Field(min_length=1, max_length=200)
    disputed_cents: int = Field(ge=0, le=10**9)
    reason: str = Field(max_length=2000)


@event_type
class InvoiceDisputed(Event):
    TYPE = "InvoiceDisputed"
    TOPIC = "invoice.disputed"
    payload: Dispute


class CheckInvoicePayload(CommandPayload):
    invoice_id: str
    disputed_cents: int


@event_type
class CheckInvoice(Command):
    TYPE = "CheckInvoice"
    STEP = "check-invoice"
    payload: CheckInvoicePayload


class InvoiceCheckedPayload(ResultPayload):
    found: bool
    billed_cents: int = 0
    overcharged_cents: int = 0  # what the ledger shows was billed too much


@event_type
class InvoiceChecked(Result):
    TYPE = "InvoiceChecked"
    payload: InvoiceCheckedPayload


class CreditNote(Model):
    """The credit the process books: what a reviewer approves above the automatic limit (its `note`
    is what an edit replaces; an edit may also lower `credit_cents`)."""

    invoice_id: str
    credit_cents: int = Field(gt=0, le=10**9)
    currency: str = "USD"
    note: str = Field(min_length=1, max_length=2000)
