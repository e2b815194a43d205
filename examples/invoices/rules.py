"""Invoice dispute: check the invoice (timeout, retries), credit a small overcharge, a human approves the rest.

    InvoiceDisputed -> CheckInvoice: 30 s timeout; a timeout or a retryable StepFailed retries (2 retries)
    InvoiceChecked  -> not found, no overcharge: rejected; a credit <= AUTO_CREDIT_CENTS: credited;
                       above: ApprovalRequested of a CreditNote, waiting_for_approval (reminders, 24 h deadline)
    ApprovalDecided -> approve / edit: credited; reject: rejected. The deadline: escalated.

A decision for another approval ID, draft hash or policy version, decided after the deadline, or an
edit that raises the credit is refused (`Decision(state, rejection=...)`: the state is unchanged).
What the reviewer sees and what an edit means: `approval.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from pm.events import (
    ApprovalDecided,
    ApprovalDecidedPayload,
    ApprovalReminder,
    ApprovalReminderPayload,
    ApprovalRequested,
    ApprovalRequestedPayload,
    Event,
    StepFailed,
    TimerFired,
    TimerPayload,
    derive_id,
)
from pm.patterns import (
    TIMEOUT,
    Effects,
    StepState,
    answered,
    await_deadline,
    awaiting,
    escalate,
    finish,
    issue,
    parse_timer,
    set_reminder,
    spend_retry,
    take_timer,
    timed_out,
)
from pm.process import Decision, Status, Upcaster

from .approval import credit_request, decided_credit
from .events import (
    CheckInvoice,
    CheckInvoicePayload,
    CreditNote,
    Dispute,
    InvoiceChecked,
    InvoiceCheckedPayload,
    InvoiceDisputed,
)

STEP, CHECK_TIMEOUT, RETRIES, AUTO_CREDIT_CENTS = CheckInvoice.STEP, timedelta(seconds=30), 2, 5_000
APPROVAL_TIMEOUT, REMIND_EVERY = timedelta(hours=24), timedelta(hours=8)
DEADLINE, REMINDER = "approval-deadline", "approval-reminder"  # timer names


class DisputeState(StepState):
    dispute: Dispute
    approval: ApprovalRequestedPayload | None = None  # the request as published
    reminders: int = 0
    credit: CreditNote | None = None  # what was credited


class InvoiceDisputeProcess:
    name, version, state_type = "invoice-dispute", 1, DisputeState
    upcasters: Mapping[int, Upcaster] = {}

    def starts(self, event: Event) -> bool:
        return isinstance(event, InvoiceDisputed)

    def initial_state(self, event: Event) -> DisputeState:
        assert isinstance(event, InvoiceDisputed)
        return DisputeState(correlation_id=event.correlation_id, dispute=event.payload)

    def decide(self, state: DisputeState, event: Event, now: datetime) -> Decision[DisputeState]:
        fx = Effects(event, now)
        if isinstance(event, ApprovalDecided):
            return self._on_decision(state, event.payload, fx)
        if state.terminal or (isinstance(event, InvoiceDisputed) and state.attempts):
            return Decision(state)  # late results, stale timers, a repeated dispute: nothing changes
        if isinstance(event, InvoiceDisputed):
            return fx.decision(self._check(state, fx))
        if isinstance(event, TimerFired):
            return fx.decision(self._on_timer(state, event.payload, fx))
        if not isinstance(event, InvoiceChecked | StepFailed) or not awaiting(state, STEP, event.payload.command_id):
            return Decision(state)  # an older attempt's answer
        state = answered(state, STEP, fx)
        if isinstance(event, InvoiceChecked):
            return fx.decision(self._on_checked(state, event.payload, fx))
        retried = spend_retry(state, STEP, RETRIES) if event.payload.retryable else None  # None: escalate
        return fx.decision(self._check(retried, fx) if retried else escalate(state, event.payload.reason, fx))

    def _check(self, state: DisputeState, fx: Effects) -> DisputeState:
        d = state.dispute
        return issue(state, STEP, lambda cid, n: CheckInvoice(**fx.envelope(cid), payload=CheckInvoicePayload(
            command_id=cid, attempt=n, invoice_id=d.invoice_id, disputed_cents=d.disputed_cents)), CHECK_TIMEOUT, fx)

    def _on_checked(self, state: DisputeState, p: InvoiceCheckedPayload, fx: Effects) -> DisputeState:
        d = state.dispute
        credit = min(p.overcharged_cents, d.disputed_cents) if p.found else 0
        if credit == 0:
            return finish(state, Status.REJECTED, "no overcharge" if p.found else f"no invoice {d.invoice_id}", fx)
        note = CreditNote(invoice_id=d.invoice_id, credit_cents=credit, note=f"Overcharge on {d.invoice_id}")
        if credit <= AUTO_CREDIT_CENTS:
            return finish(state, "credited", None, fx, credit=note)
        request = credit_request(derive_id(state.correlation_id, "approval"), d, p, note, limit_cents=AUTO_CREDIT_CENTS,
                                 requested_at=fx.now, deadline=fx.now + APPROVAL_TIMEOUT)  # fmt: skip
        fx.publish.append(ApprovalRequested(**fx.envelope(derive_id(request.approval_id, "request")), payload=request))
        state = state.model_copy(update={"approval": request, "status": Status.WAITING_FOR_APPROVAL})
        return await_deadline(state, DEADLINE, 1, request.deadline, fx, reminder_name=REMINDER, every=REMIND_EVERY)

    def _on_timer(self, state: DisputeState, t: TimerPayload, fx: Effects) -> DisputeState:
        live, (kind, _) = take_timer(state, t.timer_id, t.name), parse_timer(t.name)
        if live is None:
            return state  # stale: answered, cancelled or superseded
        if kind == TIMEOUT:
            retried = spend_retry(timed_out(live, STEP), STEP, RETRIES)
            return self._check(retried, fx) if retried else escalate(live, f"timed out after {RETRIES} retries", fx)
        a = live.approval
        assert a is not None  # the other timers are the approval's
        if kind == DEADLINE:
            return escalate(live, f"no approval decision by {a.deadline.isoformat()}", fx)
        n = live.reminders + 1
        ping = ApprovalReminderPayload(**a.model_dump(include={"approval_id", "requested_at", "deadline"}), reminder=n)
        fx.publish.append(ApprovalReminder(**fx.envelope(derive_id(a.approval_id, "reminder", n)), payload=ping))
        return set_reminder(live.model_copy(update={"reminders": n}), REMINDER, n + 1, t.due_at + REMIND_EVERY,
                            a.deadline, fx)  # fmt: skip

    def _on_decision(self, state: DisputeState, p: ApprovalDecidedPayload, fx: Effects) -> Decision[DisputeState]:
        a = state.approval
        if a is None or state.status != Status.WAITING_FOR_APPROVAL:
            return Decision(state, rejection=f"not waiting for approval: the process is {state.status}")
        wrong = [k for k in ("approval_id", "draft_hash", "policy_version") if getattr(p, k) != getattr(a, k)]
        if wrong:
            return Decision(state, rejection=f"{', '.join(wrong)} mismatch: not for request {a.approval_id}")
        if p.decided_at > a.deadline:
            return Decision(state, rejection=f"expired: decided after the deadline {a.deadline.isoformat()}")
        if p.decision == "reject":
            return fx.decision(finish(state, Status.REJECTED, f"rejected by {p.reviewer}: {p.reason or 'no reason'}", fx))
        try:  # an edit may lower the credit, never raise it above min(overcharged, disputed)
            credit = decided_credit(a, p)
        except ValueError as exc:  # pydantic's ValidationError is one
            return Decision(state, rejection=f"edit refused: {exc}")
        return fx.decision(finish(state, "credited", f"{p.decision} by {p.reviewer}", fx, credit=credit))


INVOICE_DISPUTE = InvoiceDisputeProcess()
