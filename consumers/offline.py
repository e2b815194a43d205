"""The offline rules: keyword classification and a reply template, FOR THE DEMO ONLY.

They stand in for a model when no LLM endpoint is configured (`PM_LLM_BASE_URL`
empty) so the demo and benchmarks run anywhere without network access or keys.
They are deterministic and deliberately simple; they are not a product feature,
and results made with them say `provider: offline`. `OfflineProvider` in
`consumers.llm` wraps them behind the same provider interface as a real model.
"""

from __future__ import annotations

import re
from datetime import datetime

from consumers.llm_output import Classification, Draft, Intent, Risk
from customer_email.events import DraftReplyPayload, Email, Order
from customer_email.guard import SHIPPING_REFUND_PROMISE, allowed_refund_cents

__all__ = [
    "OFFLINE_MODEL",
    "offline_classification",
    "offline_draft",
    "extract_order_id",
    "format_money",
]

OFFLINE_MODEL = "offline-rules-v1"

# First match wins, in this order: a refund request outranks a delivery question in the same mail.
_INTENT_RULES: tuple[tuple[Intent, tuple[str, ...]], ...] = (
    ("refund_request", ("refund", "money back", "reimburse", "chargeback")),
    (
        "delivery_status",
        ("where is", "hasn't arrived", "has not arrived", "not arrived", "tracking", "not received"),
    ),
    ("complaint", ("broken", "damaged", "angry", "terrible", "disappointed", "unacceptable")),
)
_HIGH_RISK = ("chargeback", "lawyer", "legal action", "sue ", "court", "fraud", "scam", "police")
_BASE_RISK: dict[str, Risk] = {
    "refund_request": "medium",
    "complaint": "medium",
    "delivery_status": "low",
    "other": "low",
}
# "A-1001", "ORD-20931", or "order #1234" / "order no. 1234" / "order number: 1234".
_ORDER_CODE = re.compile(r"\b([A-Z]{1,5}-\d{3,})\b")
_ORDER_NUMBER = re.compile(r"\border\s*(?:#|no\.?|number|nr\.?)?\s*:?\s*#?\s*(\d{3,})\b", re.IGNORECASE)


def extract_order_id(text: str) -> str | None:
    """The first order reference in `text`, as written (`A-1001`) or its digits (`order #1234` -> `1234`)."""
    code = _ORDER_CODE.search(text)
    if code:
        return code.group(1)
    number = _ORDER_NUMBER.search(text)
    return number.group(1) if number else None


def offline_classification(email: Email) -> Classification:
    """Keyword rules: intent by the first matching rule, risk raised by threats, order ID from the mail."""
    text = f"{email.subject}\n{email.body}"
    lowered = f" {text.lower()} "
    intent: Intent = "other"
    for candidate, keywords in _INTENT_RULES:
        if any(k in lowered for k in keywords):
            intent = candidate
            break
    risk: Risk = "high" if any(k in lowered for k in _HIGH_RISK) else _BASE_RISK[intent]
    order_id = email.order_id or extract_order_id(text)
    return Classification(
        intent=intent, risk=risk, order_id=order_id, confidence=0.5 if intent == "other" else 0.8
    )


def format_money(cents: int, currency: str) -> str:
    return f"{cents // 100}.{cents % 100:02d} {currency}"


def _date(value: datetime | None) -> str:
    return value.strftime("%A, %B %d, %Y") if value else "a date we do not know yet"


def _status_sentence(order: Order) -> str:
    oid, carrier = order.order_id, order.carrier
    status = order.status.lower()
    if status == "delivered":
        return f"Our records show that order {oid} was delivered by {carrier}."
    if status == "lost":
        return f"{carrier} has reported order {oid} as lost in transit, and we are sorry for the trouble."
    if status == "processing":
        return (
            f"Order {oid} is being prepared and will be shipped with {carrier}; "
            f"the expected delivery date is {_date(order.expected_delivery)}."
        )
    if status in {"shipped", "in_transit", "in transit"}:
        return (
            f"Order {oid} was shipped with {carrier} on {_date(order.shipped_at)} "
            f"and is expected to arrive on {_date(order.expected_delivery)}."
        )
    return (
        f"The current status of order {oid} is '{order.status}' (carrier: {carrier}, "
        f"expected delivery: {_date(order.expected_delivery)})."
    )


_OPENERS: dict[str, str] = {
    "refund_request": "Thank you for your message about a refund for order {oid}.",
    "delivery_status": "Thank you for asking about the delivery of order {oid}.",
    "complaint": "We are sorry to hear about your experience with order {oid}.",
}


def offline_draft(command: DraftReplyPayload) -> Draft:
    """A polite template reply that quotes the order, its carrier and delivery date.

    It offers a refund of the shipping cost only when the policy allows it
    (`refund_shipping`, the promise code in `allowed_promises`, and within the
    limit the guard computes, `allowed_refund_cents`). A repair request (violations given) gets the most conservative
    form: no refund, no promises, just the facts, since this template has nothing
    smarter to try and the first form already obeyed the policy as it read it.
    """
    email, order, policy = command.email, command.order, command.policy
    subject = email.subject if email.subject.lower().startswith("re:") else f"Re: {email.subject}".strip()
    if order is None and command.candidate_orders:
        listed = "\n".join(f"- {oid}" for oid in command.candidate_orders)
        body = (
            "Hello,\n\n"
            "Thank you for contacting us. We found more than one open order under your address:\n"
            f"{listed}\n"
            "Could you reply and tell us which of these your message is about, so we can look into it?\n\n"
            "Kind regards,\nCustomer Support"
        )
        return Draft(subject=subject, body=body, order_id=None, refund_cents=0, promises=[])
    if order is None:
        body = (
            "Hello,\n\n"
            "Thank you for contacting us. We could not find an order matching your message; "
            "could you reply with your order number so we can look into it?\n\n"
            "Kind regards,\nCustomer Support"
        )
        return Draft(subject=subject, body=body, order_id=None, refund_cents=0, promises=[])

    oid = order.order_id
    lines = [
        f"Dear {order.customer_name}," if order.customer_name else "Hello,",
        "",
        _OPENERS.get(command.intent, "Thank you for contacting us about order {oid}.").format(oid=oid),
        _status_sentence(order),
    ]
    refund_cents = 0
    promises: list[str] = []
    shipping = order.shipping_cost_cents
    may_refund = (
        not command.violations
        and SHIPPING_REFUND_PROMISE in policy.allowed_promises
        and 0 < shipping <= allowed_refund_cents(order, policy, shipping=True)
    )
    if may_refund:
        refund_cents = shipping
        promises = [SHIPPING_REFUND_PROMISE]
        lines.append(
            f"As a goodwill gesture we will refund the shipping cost of {format_money(shipping, order.currency)}"
            " to your original payment method."
        )
    elif command.intent == "refund_request":
        lines.append("A member of our team will review your request and reply to you.")
    lines += ["", "Kind regards,", "Customer Support"]
    return Draft(
        subject=subject, body="\n".join(lines), order_id=oid, refund_cents=refund_cents, promises=promises
    )
