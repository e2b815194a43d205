"""The customer-email approval request: the draft as the proposal, the e-mail and order as what the reviewer sees.

`approval_payload` is the one place the request is built, by the rules and by `upcast_request`,
which reads requests written before approvals were generic (schema versions 1 and 2 carried the
e-mail, order and draft as fields) into today's shape, identical to what the rules build now, so
`pm replay --verify` stays clean over old journals.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from customer_email.events import ConversationMessage, Draft, Email, Order
from pm.events import ApprovalField, ApprovalRequestedPayload
from pm.proposals import canonical_json, proposal_hash

__all__ = ["PROPOSAL_TYPE", "EDITABLE", "approval_payload", "edited_draft", "upcast_request"]

PROPOSAL_TYPE = "Draft"
EDITABLE = "body"  # a reviewer's edit replaces the reply text; the claims come with it (--set)


def _money(cents: int, currency: str) -> str:
    return f"{cents // 100}.{cents % 100:02d} {currency}"


def approval_payload(
    *,
    approval_id: str,
    policy_version: str,
    email: Email,
    body_bytes: int | None = None,
    intent: str,
    risk: str,
    order: Order | None,
    draft: Draft,
    findings: list[str],
    reasons: list[str],
    requested_at: datetime,
    deadline: datetime,
    candidates: list[str] | None = None,
    history: list[ConversationMessage] | None = None,
) -> ApprovalRequestedPayload:
    """The request. `body_bytes` (the whole body's size, when `email.body` is an excerpt), `candidates`
    (the open orders a reply asks about) and `history` (earlier messages of the conversation) are shown
    only when given, so requests without them read back unchanged."""
    proposal = canonical_json(draft)
    currency = order.currency if order is not None else ""
    body = email.body
    if body_bytes is not None:
        body += f"\n[... cut: the first {len(email.body.encode('utf-8', 'replace'))} of {body_bytes} bytes]"
    display = [
        ("From", email.sender),
        ("Subject", email.subject),
        ("Intent / risk", f"{intent} / {risk}"),
        ("E-mail", body),
    ]
    for message in history or ():
        who = "Customer" if message.role == "customer" else "Our reply"
        text = message.excerpt + (" [...]" if message.truncated else "")
        display.append((f"Earlier ({who}, {message.received_at.isoformat()})", f"{message.subject}\n{text}"))
    if candidates:
        display.append(("Open orders (none named)", ", ".join(candidates)))
    if order is not None:
        display.append(
            (
                "Order",
                f"{order.order_id}: {order.status} via {order.carrier}, total "
                f"{_money(order.total_cents, currency)}, shipping {_money(order.shipping_cost_cents, currency)}",
            )
        )
    display += [
        ("Refund offered", _money(draft.refund_cents, currency).strip()),
        ("Promises", ", ".join(draft.promises) or "-"),
    ]
    context = {
        "email": email.model_dump(mode="json"),
        "order": order.model_dump(mode="json") if order is not None else None,
        "intent": intent,
        "risk": risk,
    }
    return ApprovalRequestedPayload(
        approval_id=approval_id,
        draft_hash=proposal_hash(proposal),
        policy_version=policy_version,
        proposal_type=PROPOSAL_TYPE,
        proposal=proposal,
        editable=EDITABLE,
        title=f"Reply to {email.sender}: {email.subject}"[:300],
        display=[ApprovalField(label=label, value=value) for label, value in display],
        context=canonical_json(context),
        findings=list(findings),
        reasons=list(reasons),
        requested_at=requested_at,
        deadline=deadline,
    )


def upcast_request(payload: dict[str, Any]) -> dict[str, Any]:
    """An `ApprovalRequested` payload of schema version 1 or 2 (e-mail fields) in today's generic shape."""
    order = payload.get("order")
    return approval_payload(
        approval_id=payload["approval_id"],
        policy_version=payload["policy_version"],
        email=Email.model_validate(payload["email"]),
        intent=payload["intent"],
        risk=payload["risk"],
        order=Order.model_validate(order) if order is not None else None,
        draft=Draft.model_validate(payload["draft"]),
        findings=list(payload.get("guard_verdict") or []),
        reasons=list(payload.get("reasons") or []),
        requested_at=payload["requested_at"],
        deadline=payload["deadline"],
    ).model_dump()


def edited_draft(draft: Draft, body: str, fields: str | None) -> Draft:
    """The draft a reviewer's edit stands for: their text, and the fields they signed (else the draft's).

    ValueError says what is wrong (not a JSON object, an unknown field, a value the model refuses).
    """
    update: dict[str, Any] = {}
    if fields is not None:
        try:
            update = json.loads(fields)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"edited fields are not JSON: {exc}") from exc
        if not isinstance(update, dict):
            raise ValueError("edited fields must be a JSON object")
        if EDITABLE in update:
            raise ValueError(f"the edited {EDITABLE} goes in edited_body, not in the edited fields")
    try:
        return Draft.model_validate({**draft.model_dump(), **update, EDITABLE: body})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"edited fields: {problems}") from exc
