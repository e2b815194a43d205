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


def test_orders_by_customer_address_only_that_customers() -> None:
    orders = load_orders()
    extra = orders["A-1001"].model_copy(update={"order_id": "A-2001", "customer_email": "Jane Doe <Jane@Example.com>"})
    with OrderService(port=0, orders={**orders, "A-2001": extra}) as service:
        def get(query: str) -> httpx.Response:
            return httpx.get(f"{service.url}/orders{query}", timeout=5)

        jane = get("?customer=jane%40example.com")
        # A display name is parsed away: the same mailbox, the same orders.
        named = get("?customer=Jane%20Doe%20%3CJANE%40example.com%3E")
        nobody = get("?customer=nobody%40example.com")
        refused = [
            get(""),  # never every customer's orders
            get("?customer="),
            get("?customer=jane%40example.com&customer=omar%40example.com"),
            get("?customer=attacker%40evil.example%2C%20jane%40example.com"),  # a list, not an address
            get("?customer=%22jane%40example.com%22%20%3Cattacker%40evil.example%3E"),
        ]
    assert jane.status_code == 200 and jane.json()["customer"] == "jane@example.com"
    assert [o["order_id"] for o in jane.json()["orders"]] == ["A-1001", "A-2001"]
    assert named.json() == jane.json()
    assert nobody.status_code == 200 and nobody.json()["orders"] == []
    assert [r.status_code for r in refused] == [400] * len(refused)
