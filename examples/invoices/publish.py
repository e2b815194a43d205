"""A sample upstream: `python -m invoices.publish INV-1 INV-2 ...` publishes one dispute per invoice.

It uses pm's Python API with the configuration every `pm` command reads (PM_BOOTSTRAP,
PM_TOPIC_PREFIX, ...); run it from the folder that holds `invoices/`. It prints the app's name.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from pm.app import load_app
from pm.client import Publisher
from pm.config import load_config

from .events import Dispute, InvoiceDisputed


def main(invoices: list[str]) -> None:
    app = load_app("invoices.app:app")  # its schemas (`pm schemas generate`) encode the events
    now = datetime.now(UTC)
    with Publisher(load_config()) as publisher:
        for invoice in invoices:
            dispute = Dispute(invoice_id=invoice, customer="ACME", disputed_cents=50_000, reason="billed twice")
            cid = f"dispute-{invoice}"
            publisher.publish(InvoiceDisputed(event_id=cid, correlation_id=cid, occurred_at=now, payload=dispute))
    print(app.name)


if __name__ == "__main__":
    main(sys.argv[1:])
