"""The check-invoice step: looks the invoice up in the billing ledger (a sample ledger here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pm.events import Event, StepFailed, StepFailedPayload, derive_id

from .events import CheckInvoice, InvoiceChecked, InvoiceCheckedPayload

__all__ = ["LEDGER", "CheckInvoiceHandler", "build_handler"]

# invoice -> (billed cents, overcharged cents); a real handler calls the billing system.
# INV-1's 15.00 is credited automatically, INV-2's 200.00 is above AUTO_CREDIT_CENTS: a reviewer approves it.
LEDGER: dict[str, tuple[int, int]] = {"INV-1": (12_000, 1_500), "INV-2": (99_000, 20_000), "INV-3": (4_000, 0)}
FLAKY = "INV-FLAKY"  # answers "billing unavailable" to its first attempt, to show the PM's retries


class CheckInvoiceHandler:
    step = CheckInvoice.STEP

    def handle(self, command: Event, now: datetime) -> Event:
        assert isinstance(command, CheckInvoice)
        p = command.payload
        envelope: dict[str, Any] = {
            "event_id": derive_id(command.event_id, "result"),
            "correlation_id": command.correlation_id,
            "causation_id": command.event_id,
            "occurred_at": now,
        }
        if p.invoice_id == FLAKY and p.attempt == 1:
            failed = StepFailedPayload(command_id=p.command_id, attempt=p.attempt, step=self.step,
                                       retryable=True, reason="billing unavailable")  # fmt: skip
            return StepFailed(**envelope, payload=failed)
        billed, over = LEDGER.get(p.invoice_id, (0, 0)) if p.invoice_id != FLAKY else (8_000, 700)
        found = p.invoice_id in LEDGER or p.invoice_id == FLAKY
        result = InvoiceCheckedPayload(command_id=p.command_id, attempt=p.attempt, found=found,
                                       billed_cents=billed, overcharged_cents=over)  # fmt: skip
        return InvoiceChecked(**envelope, payload=result)


def build_handler(config: Any, **options: Any) -> CheckInvoiceHandler:
    return CheckInvoiceHandler()
