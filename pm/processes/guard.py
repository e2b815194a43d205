"""The schema guard: every reply draft passes here before it can be sent or shown for approval.

Two layers: the pydantic `Draft` model (shape and types), then business rules that
need the order and the refund policy. `check_draft` returns human-readable
violations; an empty list means the draft passes. The violations go back to the
drafting model verbatim in a repair request, so each one says what is wrong and
what the limit is.

Pure: no I/O, no clock. `draft_hash` binds an approval to the exact draft approved.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from pm.events import Draft, Email, Order, RefundPolicy

__all__ = [
    "BODY_MIN_CHARS",
    "BODY_MAX_CHARS",
    "REFUND_PROMISES",
    "SHIPPING_REFUND_PROMISE",
    "addresses",
    "allowed_refund_cents",
    "check_draft",
    "draft_hash",
    "order_belongs_to",
]

BODY_MIN_CHARS = 50  # shorter is not a real answer
BODY_MAX_CHARS = 2000  # longer is rambling (and a sign of a runaway model)

SHIPPING_REFUND_PROMISE = "refund_shipping"
# Promise codes that back a non-zero refund_cents: money offered must be a stated promise.
REFUND_PROMISES = frozenset(
    {"refund", "refund_partial", "partial_refund", "full_refund", SHIPPING_REFUND_PROMISE}
)

# A money amount in prose: "$12", "12.50 USD", "EUR 8,99", "£5" (currency sign or ISO code next to a number).
_MONEY_RE = re.compile(
    r"([$€£]\s?\d)|(\b(USD|EUR|GBP|CAD|AUD)\s?\d)|(\d(?:[\d,.]*\d)?\s?(USD|EUR|GBP|CAD|AUD|dollars?|euros?)\b)",
    re.IGNORECASE,
)
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# "order 12345", "order #A-991", "order number: X1234" -> the token after the word order
# (4+ characters with a digit, so "order 12 days ago" is not mistaken for an order ID).
_ORDER_MENTION_RE = re.compile(
    r"\border\s*(?:id|number|no\.?|ref(?:erence)?)?\s*[:#]?\s*([A-Za-z0-9][A-Za-z0-9_-]{3,})",
    re.IGNORECASE,
)


def allowed_refund_cents(order: Order, policy: RefundPolicy, *, shipping: bool = False) -> int:
    """The most a reply may offer for `order` under `policy`.

    min(policy.max_refund_cents, floor(policy.max_refund_ratio * order.total_cents)); a shipping
    refund is further capped at the order's shipping cost, and is 0 when the policy does not
    refund shipping. Decimal arithmetic keeps 0.1 * 1000 exactly 100 (no float surprises).
    """
    ratio_cap = math.floor(Decimal(repr(policy.max_refund_ratio)) * order.total_cents)
    allowed = max(0, min(policy.max_refund_cents, ratio_cap))
    if shipping:
        allowed = min(allowed, order.shipping_cost_cents) if policy.refund_shipping else 0
    return allowed


def _order_id_pattern(order_id: str) -> re.Pattern[str] | None:
    """Tokens shaped like `order_id` (same letter prefix, then digits): other orders' IDs look alike.

    Only for IDs with a letter prefix (ORD-1001, A1001): a bare number would match prices and dates.
    """
    m = re.fullmatch(r"([A-Za-z][A-Za-z_-]*)(\d+)", order_id)
    if m is None:
        return None
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(m.group(1))}\d+(?![A-Za-z0-9])", re.IGNORECASE)


def _foreign_order_ids(body: str, order_id: str) -> list[str]:
    found: list[str] = []
    pattern = _order_id_pattern(order_id)
    candidates = [m.group(0) for m in pattern.finditer(body)] if pattern else []
    candidates += [m.group(1) for m in _ORDER_MENTION_RE.finditer(body) if re.search(r"\d", m.group(1))]
    for token in candidates:
        if token.lower() != order_id.lower() and token not in found:
            found.append(token)
    return found


def addresses(text: str) -> set[str]:
    """Bare lower-case addresses in `text` (a header may read `Jane <jane@example.com>`)."""
    return {a.lower() for a in _EMAIL_RE.findall(text)}


def order_belongs_to(order: Order, email: Email) -> bool:
    """True when the order's customer address is the e-mail's sender."""
    return bool(addresses(order.customer_email) & addresses(email.sender))


def check_draft(
    draft: Draft | Mapping[str, Any],
    *,
    order: Order,
    policy: RefundPolicy,
    email: Email | None = None,
) -> list[str]:
    """Violations of the draft against the order and policy; [] means the draft passes.

    `draft` may be raw model output (a mapping): schema errors are then the violations.
    `email` (the customer's message) adds the sender and the support address (its recipient)
    to the addresses a reply may mention; without it only the order's customer address is allowed.
    """
    if not isinstance(draft, Draft):
        try:
            draft = Draft.model_validate(draft)
        except ValidationError as exc:
            return [
                f"schema: {'.'.join(str(p) for p in err['loc']) or 'draft'}: {err['msg']}"
                for err in exc.errors()
            ]
    violations: list[str] = []
    body = draft.body

    # Length bounds.
    length = len(body.strip())
    if length < BODY_MIN_CHARS:
        violations.append(f"body too short: {length} characters, at least {BODY_MIN_CHARS} required")
    if length > BODY_MAX_CHARS:
        violations.append(f"body too long: {length} characters, at most {BODY_MAX_CHARS} allowed")
    if not draft.subject.strip():
        violations.append("subject is empty")

    # The order is quoted, and it is this customer's order.
    if draft.order_id != order.order_id:
        violations.append(f"draft.order_id is {draft.order_id!r}, must be {order.order_id!r}")
    if order.order_id.lower() not in body.lower():
        violations.append(f"body must quote the order ID {order.order_id}")

    # Promises the policy covers, and nothing else.
    for promise in draft.promises:
        if promise not in policy.allowed_promises:
            violations.append(
                f"promise {promise!r} is not allowed by policy {policy.version} "
                f"(allowed: {', '.join(policy.allowed_promises) or 'none'})"
            )

    # Refund never above what the policy allows for this order.
    shipping = SHIPPING_REFUND_PROMISE in draft.promises
    if draft.refund_cents < 0:
        violations.append(f"refund_cents is negative ({draft.refund_cents})")
    elif draft.refund_cents > 0:
        if not REFUND_PROMISES.intersection(draft.promises):
            violations.append(
                f"refund_cents is {draft.refund_cents} but no refund promise is made "
                f"(one of: {', '.join(sorted(REFUND_PROMISES))})"
            )
        if shipping and not policy.refund_shipping:
            violations.append(f"policy {policy.version} does not refund shipping")
        allowed = allowed_refund_cents(order, policy, shipping=shipping)
        if draft.refund_cents > allowed:
            what = "shipping refund" if shipping else "refund"
            violations.append(
                f"{what} of {draft.refund_cents} cents exceeds the {allowed} cents policy "
                f"{policy.version} allows for order {order.order_id}"
            )

    # The text may not offer money the structured claims do not declare (the rules above only see claims).
    if draft.refund_cents == 0 and _MONEY_RE.search(body):
        violations.append(
            "body states a money amount but the draft declares no refund (refund_cents is 0): "
            "declare the refund or remove the amount"
        )

    # No other customer's data: no foreign e-mail addresses, no other order IDs.
    own = addresses(order.customer_email)
    if email is not None:
        own |= addresses(email.sender) | addresses(email.recipient)
    for address in dict.fromkeys(a.lower() for a in _EMAIL_RE.findall(body)):
        if address not in own:
            violations.append(f"body mentions an e-mail address that is not the customer's: {address}")
    for other in _foreign_order_ids(body, order.order_id):
        violations.append(f"body mentions another order ID: {other}")
    return violations


def draft_hash(draft: Draft) -> str:
    """sha256 hex of the draft's canonical JSON (sorted keys, no whitespace, UTF-8)."""
    canonical = json.dumps(
        draft.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
