"""The draft guard, one rule at a time: each case breaks exactly one rule of a passing draft."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from customer_email.events import Draft, Email, Order, RefundPolicy
from customer_email.guard import (
    BODY_MAX_CHARS,
    BODY_MIN_CHARS,
    addresses,
    allowed_refund_cents,
    check_draft,
    draft_hash,
    order_belongs_to,
)

ORDER = Order(
    order_id="ORD-1001",
    customer_email="jane@example.com",
    customer_name="Jane Doe",
    carrier="DHL",
    status="lost",
    total_cents=10000,
    shipping_cost_cents=700,
)
POLICY = RefundPolicy(
    category="refund_request",
    version="refund-v3",
    refund_shipping=True,
    max_refund_cents=4000,
    max_refund_ratio=0.3,
    allowed_promises=["refund", "refund_shipping", "reship"],
    summary="Up to 30% of the order, at most 40 USD; shipping refundable.",
)
EMAIL = Email(
    message_id="<m1@example.com>",
    sender="Jane Doe <Jane@Example.com>",
    recipient="support@shop.example",
    subject="Lost parcel",
    body="My parcel ORD-1001 never arrived.",
    received_at=datetime(2025, 3, 1, tzinfo=UTC),
)
BODY = (
    "Hello Jane, we are sorry that order ORD-1001 got lost. We will reship it today and refund "
    "30.00 USD. Write to support@shop.example or reply to jane@example.com's thread any time."
)
PASSING = Draft(
    subject="Your order ORD-1001",
    body=BODY,
    order_id="ORD-1001",
    refund_cents=3000,
    promises=["refund", "reship"],
)


def check(**changes: Any) -> list[str]:
    return check_draft(PASSING.model_copy(update=changes), order=ORDER, policy=POLICY, email=EMAIL)


def test_the_reference_draft_passes() -> None:
    assert check() == []


def test_allowed_refund() -> None:
    assert allowed_refund_cents(ORDER, POLICY) == 3000  # 30% of 100.00 < 40.00 cap
    assert allowed_refund_cents(ORDER, POLICY.model_copy(update={"max_refund_cents": 2500})) == 2500
    assert allowed_refund_cents(ORDER, POLICY, shipping=True) == 700  # shipping cost caps it
    no_shipping = POLICY.model_copy(update={"refund_shipping": False})
    assert allowed_refund_cents(ORDER, no_shipping, shipping=True) == 0
    # floor, computed exactly: in floats 0.29 * 100 is 28.999999999999996, which would floor to 28
    small = ORDER.model_copy(update={"total_cents": 100})
    assert allowed_refund_cents(small, POLICY.model_copy(update={"max_refund_ratio": 0.29})) == 29
    assert allowed_refund_cents(small, POLICY.model_copy(update={"max_refund_ratio": 0.155})) == 15


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"refund_cents": 3001},
            "refund of 3001 cents exceeds the 3000 cents policy refund-v3 allows for order ORD-1001",
        ),
        (
            {"refund_cents": 701, "promises": ["refund_shipping"]},
            "shipping refund of 701 cents exceeds the 700 cents",
        ),
        ({"refund_cents": -5}, "refund_cents is negative (-5)"),
        ({"refund_cents": 100, "promises": ["reship"]}, "refund_cents is 100 but no refund promise is made"),
        (
            {"promises": ["refund", "free_upgrade"]},
            "promise 'free_upgrade' is not allowed by policy refund-v3",
        ),
        ({"order_id": "ORD-1002"}, "draft.order_id is 'ORD-1002', must be 'ORD-1001'"),
        ({"order_id": None}, "draft.order_id is None, must be 'ORD-1001'"),
        ({"body": BODY.replace("ORD-1001", "your order")}, "body must quote the order ID ORD-1001"),
        (
            {"body": "Order ORD-1001: refund issued."},
            f"body too short: 30 characters, at least {BODY_MIN_CHARS}",
        ),
        ({"body": BODY + " " + "x" * BODY_MAX_CHARS}, f"at most {BODY_MAX_CHARS} allowed"),
        ({"subject": "  "}, "subject is empty"),
        (
            {"body": BODY + " Bob (bob@example.org) had the same issue."},
            "body mentions an e-mail address that is not the customer's: bob@example.org",
        ),
        ({"body": BODY + " Your neighbour's ORD-2002 is fine."}, "body mentions another order ID: ORD-2002"),
        ({"body": BODY + " See also order #77812."}, "body mentions another order ID: 77812"),
    ],
)
def test_each_rule(changes: dict[str, Any], expected: str) -> None:
    violations = check(**changes)
    assert any(expected in v for v in violations), violations


def test_shipping_refund_needs_a_policy_that_refunds_shipping() -> None:
    body = BODY.replace("30.00 USD", "the 7.00 USD shipping cost")
    draft = PASSING.model_copy(update={"body": body, "refund_cents": 700, "promises": ["refund_shipping"]})
    assert check_draft(draft, order=ORDER, policy=POLICY, email=EMAIL) == []
    strict = POLICY.model_copy(update={"refund_shipping": False, "allowed_promises": ["refund_shipping"]})
    violations = check_draft(draft, order=ORDER, policy=strict, email=EMAIL)
    assert "policy refund-v3 does not refund shipping" in violations
    assert any("exceeds the 0 cents" in v for v in violations)


def test_numbers_and_own_addresses_are_not_foreign_data() -> None:
    body = BODY + " Delivery takes 3-5 days; order 12 days ago? Call 2025. Mail JANE@EXAMPLE.COM."
    assert check(body=body) == []
    # without the e-mail, only the order's customer address is known: the support address is foreign
    violations = check_draft(PASSING, order=ORDER, policy=POLICY)
    assert violations == ["body mentions an e-mail address that is not the customer's: support@shop.example"]


def test_numeric_order_ids() -> None:
    order = ORDER.model_copy(update={"order_id": "55120"})
    draft = PASSING.model_copy(update={"order_id": "55120", "body": BODY.replace("ORD-1001", "55120")})
    assert check_draft(draft, order=order, policy=POLICY, email=EMAIL) == []
    leaky = draft.model_copy(update={"body": draft.body + " Order 55121 too."})
    assert check_draft(leaky, order=order, policy=POLICY, email=EMAIL) == [
        "body mentions another order ID: 55121"
    ]


def test_schema_violations_of_raw_model_output() -> None:
    raw = {"subject": "Hi", "body": BODY, "refund_cents": "lots", "surprise": 1}
    violations = check_draft(raw, order=ORDER, policy=POLICY, email=EMAIL)
    assert any(v.startswith("schema: refund_cents:") for v in violations)
    assert any(v.startswith("schema: surprise:") for v in violations)
    assert check_draft(PASSING.model_dump(), order=ORDER, policy=POLICY, email=EMAIL) == []


def test_several_violations_are_all_reported() -> None:
    # order ID, promise, refund above policy, and the text's 30.00 USD is not the declared 9999 cents
    assert len(check(refund_cents=9999, promises=["refund", "teleport"], order_id="X")) == 4


def test_draft_hash_is_canonical_and_sensitive() -> None:
    h = draft_hash(PASSING)
    assert len(h) == 64 and int(h, 16) >= 0
    assert draft_hash(Draft.model_validate(PASSING.model_dump())) == h
    assert draft_hash(PASSING.model_copy(update={"body": BODY + "!"})) != h
    assert draft_hash(PASSING.model_copy(update={"refund_cents": 2999})) != h
    # pinned: the hash is a contract with review tools in other languages (sorted keys, no spaces, UTF-8)
    import hashlib
    import json

    canonical = json.dumps(PASSING.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert h == hashlib.sha256(canonical.encode()).hexdigest()
    assert canonical.startswith('{"body":"Hello Jane')


def test_customer_helpers() -> None:
    assert addresses("Jane <Jane@Example.com>, bob@x.org") == {"jane@example.com", "bob@x.org"}
    assert order_belongs_to(ORDER, EMAIL)
    assert not order_belongs_to(ORDER.model_copy(update={"customer_email": "bob@x.org"}), EMAIL)


@pytest.mark.parametrize(
    "sentence",
    [
        "We will refund you $500 right away.",
        "You get 12.50 USD back.",
        "A credit of EUR 20 is on its way.",
        "We send you 30 dollars.",
    ],
)
def test_body_offering_money_the_claims_do_not_declare_is_a_violation(sentence: str) -> None:
    draft = _undeclared_money_draft(sentence)
    assert any(v.startswith("body states") for v in check_draft(draft, order=ORDER, policy=POLICY))


def test_body_without_amounts_and_no_refund_passes_that_rule() -> None:
    draft = _undeclared_money_draft("Your parcel is on its way; order 12 days ago is fine.")
    assert not any(v.startswith("body states") for v in check_draft(draft, order=ORDER, policy=POLICY))


def _undeclared_money_draft(sentence: str) -> Draft:
    body = f"Hello Jane, about order ORD-1001: {sentence} Thank you for your patience with us."
    return PASSING.model_copy(update={"body": body, "refund_cents": 0, "promises": []})
