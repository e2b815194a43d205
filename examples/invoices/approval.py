"""What a reviewer sees and may change: the credit-note approval request, and an edit read back (pure).

The rules decide *when* to ask and *whether* a decision applies; this module only says what the
request shows (`pm approvals show`) and what an edit means, like the reference app's
`pm/processes/approval_request.py`.
"""

from __future__ import annotations

import json
from datetime import datetime

from pm.events import ApprovalDecidedPayload, ApprovalField, ApprovalRequestedPayload
from pm.proposals import canonical_json, proposal_hash

from .events import CreditNote, Dispute, InvoiceCheckedPayload

__all__ = ["POLICY_VERSION", "PROPOSAL_TYPE", "EDITABLE", "money", "credit_request", "decided_credit"]

POLICY_VERSION = "credit-v1"  # the credit rules a request was made under; decisions must quote it
PROPOSAL_TYPE = "CreditNote"
EDITABLE = "note"  # an edit replaces the note (edited_body) and may set credit_cents (edited_fields)


def money(cents: int, currency: str = "USD") -> str:
    return f"{cents // 100:,}.{cents % 100:02d} {currency}"


def credit_request(
    approval_id: str,
    dispute: Dispute,
    checked: InvoiceCheckedPayload,
    credit: CreditNote,
    *,
    limit_cents: int,
    requested_at: datetime,
    deadline: datetime,
) -> ApprovalRequestedPayload:
    """The request for `credit`, which is above the automatic limit `limit_cents`."""
    proposal, amount = canonical_json(credit), money(credit.credit_cents, credit.currency)
    shown = [
        ("Customer", dispute.customer),
        ("Invoice", dispute.invoice_id),
        ("Customer's reason", dispute.reason),
        ("Disputed", money(dispute.disputed_cents, credit.currency)),
        ("Billed (ledger)", money(checked.billed_cents, credit.currency)),
        ("Overcharged (ledger)", money(checked.overcharged_cents, credit.currency)),
        ("Credit", amount),
    ]
    context = {
        "dispute": dispute.model_dump(mode="json"),
        "billed_cents": checked.billed_cents,
        "overcharged_cents": checked.overcharged_cents,
    }
    return ApprovalRequestedPayload(
        approval_id=approval_id,
        draft_hash=proposal_hash(proposal),
        policy_version=POLICY_VERSION,
        proposal_type=PROPOSAL_TYPE,
        proposal=proposal,
        editable=EDITABLE,
        title=f"Credit {amount} on {dispute.invoice_id} to {dispute.customer}"[:300],
        display=[ApprovalField(label=label, value=value) for label, value in shown],
        context=canonical_json(context),
        reasons=[f"the credit is above the automatic limit of {money(limit_cents, credit.currency)}"],
        requested_at=requested_at,
        deadline=deadline,
    )


def decided_credit(request: ApprovalRequestedPayload, decision: ApprovalDecidedPayload) -> CreditNote:
    """The credit note an approve or edit stands for: the proposal, or for an edit the reviewer's note and
    a new `credit_cents` if set (signed in `edited_fields`): lower than proposed, never higher, since the
    proposal credits all the ledger supports, min(overcharged, disputed).

    ValueError says what is wrong with an edit (missing note, other fields, not JSON, a credit too high).
    """
    proposal = json.loads(request.proposal)
    if decision.decision != "edit":
        return CreditNote.model_validate(proposal)
    if not decision.edited_body or not decision.edited_body.strip():
        raise ValueError(f"an edit needs the new {EDITABLE} (edited_body)")
    try:
        fields = json.loads(decision.edited_fields or "{}")
    except RecursionError as exc:  # nested deeper than the parser goes: not a ValueError
        raise ValueError("edited_fields nested too deeply") from exc
    if not isinstance(fields, dict) or set(fields) - {"credit_cents"}:
        raise ValueError(f"an edit may set only credit_cents besides the {EDITABLE} (edited_fields: a JSON object)")
    # strict: a credit given as "100" or 100.0 is refused, not coerced
    credit = CreditNote.model_validate({**proposal, **fields, EDITABLE: decision.edited_body}, strict=True)
    if credit.credit_cents > proposal["credit_cents"]:
        raise ValueError(f"a credit of {credit.credit_cents} cents is above the {proposal['credit_cents']} proposed")
    return credit
