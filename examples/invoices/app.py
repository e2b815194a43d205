"""The invoice app: `pm --app invoices.app:app ...` (run from the folder that holds `invoices/`)."""

from __future__ import annotations

from pm.app import App, StartTopic, StepSpec

from .events import CheckInvoice, InvoiceChecked, InvoiceDisputed
from .rules import INVOICE_DISPUTE
from .steps import build_handler

app = App(
    name="invoices",
    processes=[INVOICE_DISPUTE],
    steps=[StepSpec(CheckInvoice.STEP, CheckInvoice, (InvoiceChecked,), build_handler)],
    start_topics=[StartTopic(InvoiceDisputed.TOPIC)],
    events=[InvoiceDisputed],
    schema_dir="schemas",  # beside this file; `pm schemas generate --app invoices.app:app` writes it
)
