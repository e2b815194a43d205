"""The invoice example's rules, pure: `pm.testing` runs them without Kafka (examples/invoices).

The example is imported as the team names it, `invoices` (its folder on sys.path): event types register
once per process, so every test module must use that one name (test_external_app.py does too).
"""

from __future__ import annotations

import ast
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pm.approvals import build_decision
from pm.events import (
    ApprovalDecided,
    ApprovalReminder,
    ApprovalRequested,
    Event,
    StepFailed,
    StepFailedPayload,
    derive_id,
)
from pm.process import ProcessDefinition, Status
from pm.proposals import canonical_json, proposal_hash
from pm.testing import DefinitionContract, Trace, feed, fire_due, run_definition

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
from invoices import rules  # noqa: E402
from invoices.events import (  # noqa: E402
    CheckInvoice,
    CreditNote,
    Dispute,
    InvoiceChecked,
    InvoiceCheckedPayload,
    InvoiceDisputed,
)
from invoices.steps import LEDGER  # noqa: E402

DEF = rules.INVOICE_DISPUTE
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CID = "dispute-1"
DISPUTED = 50_000


# ---------------------------------------------------------------- inputs


def disputed(invoice: str = "INV-2") -> InvoiceDisputed:
    dispute = Dispute(invoice_id=invoice, customer="ACME", disputed_cents=DISPUTED, reason="billed twice")
    return InvoiceDisputed(event_id=f"in-{invoice}", correlation_id=CID, occurred_at=T0, payload=dispute)


def _answering(trace: Trace[Any], delay: timedelta) -> dict[str, Any]:
    command = trace.last_command()
    assert isinstance(command, CheckInvoice)
    p = command.payload
    return {
        "envelope": {
            "event_id": derive_id(command.event_id, "result"),
            "correlation_id": CID,
            "causation_id": command.event_id,
            "occurred_at": command.occurred_at + delay,
        },
        "ids": {"command_id": p.command_id, "attempt": p.attempt},
    }


def checked(trace: Trace[Any], overcharged: int, *, found: bool = True, delay: float = 1.0) -> InvoiceChecked:
    """The ledger's answer to the trace's last CheckInvoice."""
    a = _answering(trace, timedelta(seconds=delay))
    payload = InvoiceCheckedPayload(**a["ids"], found=found, billed_cents=99_000, overcharged_cents=overcharged)
    return InvoiceChecked(**a["envelope"], payload=payload)


def failed(trace: Trace[Any], *, retryable: bool = True) -> StepFailed:
    a = _answering(trace, timedelta(seconds=1))
    payload = StepFailedPayload(**a["ids"], step="check-invoice", retryable=retryable, reason="billing unavailable")
    return StepFailed(**a["envelope"], payload=payload)


def request_of(trace: Trace[Any]) -> ApprovalRequested:
    requests = [e for e in trace.published if isinstance(e, ApprovalRequested)]
    assert len(requests) == 1, trace.published
    return requests[0]


def decided(
    trace: Trace[Any],
    decision: str = "approve",
    *,
    after: timedelta = timedelta(hours=1),
    event_id: str = "decision-1",
    **override: Any,
) -> ApprovalDecided:
    """A signed decision on the trace's request, as `pm approvals approve|reject|edit` builds it."""
    asked = request_of(trace).payload
    fields: dict[str, Any] = {
        "approval_id": asked.approval_id,
        "draft_hash": asked.draft_hash,
        "policy_version": asked.policy_version,
        "reason": "not our error" if decision == "reject" else None,
        **override,
    }
    return build_decision(
        correlation_id=CID,
        decision=decision,  # type: ignore[arg-type]
        reviewer="alice",
        key_id="k1",
        secret="s" * 32,
        now=asked.requested_at + after,
        event_id=event_id,
        **fields,
    )


def waiting(overcharged: int = 20_000) -> Trace[Any]:
    trace = run_definition(DEF, [disputed()])
    return feed(DEF, trace, [checked(trace, overcharged)])


# ---------------------------------------------------------------- scenarios (the contract runs each)


def auto_credit_after_a_retry() -> list[Event]:
    trace = run_definition(DEF, [disputed("INV-1")])
    trace = feed(DEF, trace, [failed(trace)])  # retryable: attempt 2 at once
    return [*trace.inputs, checked(trace, 1_500)]


def approved_after_a_reminder() -> list[Event]:
    trace = fire_due(DEF, waiting(), T0 + timedelta(hours=9))  # the first reminder
    return [*trace.inputs, decided(trace, after=timedelta(hours=10))]


def deadline_escalates() -> list[Event]:
    return list(fire_due(DEF, waiting(), T0 + timedelta(days=2)).inputs)


def timeouts_exhaust_the_retries() -> list[Event]:
    return list(fire_due(DEF, run_definition(DEF, [disputed()]), T0 + timedelta(minutes=10)).inputs)


class TestInvoiceDisputeContract(DefinitionContract):
    def definition(self) -> ProcessDefinition[Any]:
        return DEF

    def scenarios(self) -> list[list[Event]]:
        return [auto_credit_after_a_retry(), approved_after_a_reminder(), deadline_escalates(),
                timeouts_exhaust_the_retries()]  # fmt: skip


def test_the_scenarios_end_where_intended() -> None:
    ends = [run_definition(DEF, s).state for s in TestInvoiceDisputeContract().scenarios()]
    assert [s.status for s in ends] == ["credited", "credited", Status.ESCALATED, Status.ESCALATED]
    assert ends[2].reason is not None and ends[2].reason.startswith("no approval decision by")
    assert ends[3].reason == "timed out after 2 retries"


# ---------------------------------------------------------------- outcomes


def test_a_credit_at_or_below_the_limit_is_automatic() -> None:
    for overcharged in (1_500, rules.AUTO_CREDIT_CENTS):
        trace = waiting(overcharged)
        assert trace.state.status == "credited" and trace.state.reason is None
        assert trace.state.credit == CreditNote(invoice_id="INV-2", credit_cents=overcharged, note="Overcharge on INV-2")
        assert trace.published == () and trace.pending == ()  # no approval, the timeout cancelled


@pytest.mark.parametrize(("overcharged", "found", "reason"), [(0, True, "no overcharge"), (0, False, "no invoice INV-2")])
def test_nothing_to_credit_is_rejected(overcharged: int, found: bool, reason: str) -> None:
    trace = run_definition(DEF, [disputed()])
    trace = feed(DEF, trace, [checked(trace, overcharged, found=found)])
    assert (trace.state.status, trace.state.reason, trace.state.credit) == (Status.REJECTED, reason, None)


def test_above_the_limit_asks_for_approval_of_a_credit_note() -> None:
    trace = waiting()
    state, request = trace.state, request_of(trace)
    assert state.status == Status.WAITING_FOR_APPROVAL and trace.commands_of(CheckInvoice) == (trace.commands[0],)
    p = request.payload
    note = CreditNote(invoice_id="INV-2", credit_cents=20_000, note="Overcharge on INV-2")
    assert p.proposal == canonical_json(note) and p.draft_hash == proposal_hash(p.proposal)
    assert (p.proposal_type, p.policy_version, p.editable) == ("CreditNote", "credit-v1", "note")
    assert p.title == "Credit 200.00 USD on INV-2 to ACME"
    assert {f.label: f.value for f in p.display}["Overcharged (ledger)"] == "200.00 USD"
    assert json.loads(p.context)["dispute"]["reason"] == "billed twice" and p.reasons
    assert p.requested_at == T0 + timedelta(seconds=1) and p.deadline == p.requested_at + timedelta(hours=24)
    assert request.event_id == derive_id(p.approval_id, "request") and state.approval == p
    assert sorted(t.name for t in trace.pending) == ["approval-deadline", "approval-reminder"]
    assert max(t.due_at for t in trace.pending) == p.deadline


def test_the_sample_ledger_sends_inv_2_to_a_human() -> None:
    assert LEDGER["INV-2"][1] > rules.AUTO_CREDIT_CENTS >= LEDGER["INV-1"][1]


def test_approve_credits_the_proposal() -> None:
    trace = waiting()
    trace = feed(DEF, trace, [decided(trace)])
    assert trace.state.status == "credited" and trace.state.reason == "approve by alice"
    assert trace.state.credit is not None and trace.state.credit.credit_cents == 20_000
    assert trace.pending == () and trace.rejections == ()  # deadline and reminder cancelled


def test_reject_ends_rejected_with_the_reason() -> None:
    trace = waiting()
    trace = feed(DEF, trace, [decided(trace, "reject")])
    assert trace.state.status == Status.REJECTED and trace.state.credit is None
    assert trace.state.reason == "rejected by alice: not our error" and trace.pending == ()


def test_an_edit_may_lower_the_credit_and_rewrite_the_note() -> None:
    trace = waiting()
    edit = decided(trace, "edit", edited_body="Goodwill credit", edited_fields=canonical_json({"credit_cents": 15_000}))
    trace = feed(DEF, trace, [edit])
    assert trace.state.status == "credited" and trace.state.reason == "edit by alice"
    assert trace.state.credit == CreditNote(invoice_id="INV-2", credit_cents=15_000, note="Goodwill credit")


def test_an_edit_of_the_note_alone_keeps_the_credit() -> None:
    trace = waiting()
    trace = feed(DEF, trace, [decided(trace, "edit", edited_body="Credit as agreed")])
    assert trace.state.credit == CreditNote(invoice_id="INV-2", credit_cents=20_000, note="Credit as agreed")


def test_reminders_until_the_deadline_then_escalated() -> None:
    trace = fire_due(DEF, waiting(), T0 + timedelta(days=2))
    reminders = [e.payload for e in trace.published if isinstance(e, ApprovalReminder)]
    assert [r.reminder for r in reminders] == [1, 2]  # at 8 h and 16 h; the one at 24 h is the deadline
    assert trace.state.status == Status.ESCALATED and trace.pending == ()
    late = feed(DEF, trace, [decided(trace, after=timedelta(hours=20))])  # in time, but arrives after the end
    assert late.state == trace.state and "not waiting for approval" in late.rejections[-1][1]


# ---------------------------------------------------------------- retries


def test_a_retryable_failure_retries_then_credits() -> None:
    trace = run_definition(DEF, auto_credit_after_a_retry())
    assert [c.payload.attempt for c in trace.commands_of(CheckInvoice)] == [1, 2]
    assert trace.state.status == "credited" and trace.state.retries == {"check-invoice": 1}


def test_a_failure_that_is_not_retryable_escalates() -> None:
    trace = run_definition(DEF, [disputed()])
    trace = feed(DEF, trace, [failed(trace, retryable=False)])
    assert (trace.state.status, trace.state.reason) == (Status.ESCALATED, "billing unavailable")


def test_timeouts_retry_twice_then_escalate_and_a_late_answer_changes_nothing() -> None:
    trace = run_definition(DEF, timeouts_exhaust_the_retries())
    assert len(trace.commands_of(CheckInvoice)) == 1 + rules.RETRIES
    first = run_definition(DEF, [disputed()])
    retried = fire_due(DEF, first, T0 + timedelta(seconds=31))  # attempt 1 timed out, attempt 2 issued
    late = feed(DEF, retried, [checked(first, 1_500, delay=40)])  # attempt 1's answer, too late
    assert late.state == retried.state and late.decisions[-1] is not None and not late.decisions[-1].commands


# ---------------------------------------------------------------- refused decisions leave the state unchanged


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("wrong approval id", {"approval_id": "someone-else"}, "approval_id mismatch"),
    ("wrong hash", {"draft_hash": "0" * 64}, "draft_hash mismatch"),
    ("wrong policy", {"policy_version": "credit-v0"}, "policy_version mismatch"),
    ("after the deadline", {"after": timedelta(hours=24, seconds=1)}, "expired: decided after the deadline"),
    ("edit raises the credit", {"decision": "edit", "edited_body": "more", "edited_fields": '{"credit_cents":20001}'},
     "edit refused: a credit of 20001 cents is above the 20000 proposed"),
    ("edit moves the invoice", {"decision": "edit", "edited_body": "x", "edited_fields": '{"invoice_id":"INV-1"}'},
     "edit refused: an edit may set only credit_cents"),
    ("edit credit as text", {"decision": "edit", "edited_body": "x", "edited_fields": '{"credit_cents":"100"}'},
     "edit refused: 1 validation error"),
    ("edit to nothing", {"decision": "edit", "edited_body": "x", "edited_fields": '{"credit_cents":0}'},
     "edit refused: 1 validation error"),
    ("edit without a note", {"decision": "edit", "edited_body": "  "}, "edit refused: an edit needs the new note"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "why"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_decision_that_does_not_fit_is_refused(case: str, change: dict[str, Any], why: str) -> None:
    trace = waiting()
    decision = decided(trace, **change)
    after = feed(DEF, trace, [decision])
    assert after.rejections == ((len(trace.inputs), after.rejections[0][1]),), case
    assert after.rejections[0][1].startswith(why), after.rejections
    assert after.state == trace.state and after.state.status == Status.WAITING_FOR_APPROVAL
    assert after.published == trace.published and after.pending == trace.pending
    # The request still waits: the right decision is taken afterwards.
    done = feed(DEF, after, [decided(trace, event_id="decision-2")])
    assert done.state.status == "credited"


def test_a_second_decision_and_one_without_a_request_are_refused() -> None:
    trace = waiting()
    trace = feed(DEF, trace, [decided(trace)])
    again = feed(DEF, trace, [decided(trace, "reject", event_id="decision-2")])
    assert again.state == trace.state and again.rejections[-1][1] == "not waiting for approval: the process is credited"
    auto = waiting(1_500)
    stray = decided(trace, event_id="decision-3")
    assert feed(DEF, auto, [stray]).rejections[-1][1].startswith("not waiting for approval")


# ---------------------------------------------------------------- the size of the rules


def test_the_rules_stay_small_and_use_only_the_public_api() -> None:
    source = Path(rules.__file__).read_text()
    body = source[source.index("class DisputeState") :]
    lines = [line for line in body.splitlines() if line.strip()]
    assert len(lines) <= 80, f"the rules grew to {len(lines)} lines"
    tree = ast.parse(source)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert {m for m in modules if m.startswith("pm")} <= {"pm.events", "pm.patterns", "pm.process"}
