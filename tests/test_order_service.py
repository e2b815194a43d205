"""The sample order service over real HTTP."""

from __future__ import annotations

import httpx

from consumers.order_service import OrderService, load_orders
from customer_email.events import Order


def test_sample_orders_cover_the_demo_and_the_missing_order() -> None:
    orders = load_orders()
    demo = orders["A-1001"]
    assert (demo.status, demo.carrier, demo.shipping_cost_cents, demo.total_cents) == (
        "shipped",
        "UPS",
        899,
        5499,
    )
    assert demo.customer_email == "jane@example.com"
    assert "A-404" not in orders and len({o.carrier for o in orders.values()}) >= 3


def test_get_order_404_and_health() -> None:
    with OrderService(port=0) as service:
        found = httpx.get(f"{service.url}/orders/A-1001", timeout=5)
        missing = httpx.get(f"{service.url}/orders/A-404", timeout=5)
        health = httpx.get(f"{service.url}/health", timeout=5)
    assert found.status_code == 200 and Order.model_validate_json(found.content) == load_orders()["A-1001"]
    assert missing.status_code == 404 and missing.json()["order_id"] == "A-404"
    assert health.json()["status"] == "ok"
