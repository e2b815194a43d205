"""fetch-order and fetch-refund-policy end to end: command on the broker, real HTTP order service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consumer_kit import Reader, fetch_order, fetch_policy, produce, running

from consumers import load_handler
from consumers.fetch_refund_policy import DEFAULT_POLICY_FILE, PolicyFileError, load_policies
from consumers.order_service import OrderService, load_orders
from customer_email.events import FetchOrder, FetchOrderPayload, OrderFetched, RefundPolicyFetched
from pm.broker import free_port
from pm.config import Config
from pm.events import StepFailed, command_id, derive_id
from pm.steps.consumer import RetryPolicy, StepConsumer


def test_fetch_order_found_missing_and_service_down(topics: Config) -> None:
    reader = Reader(topics)
    with OrderService(port=0) as service:
        config = topics.with_settings(order_service_url=service.url)
        found, missing = fetch_order("A-1001"), fetch_order("A-404")
        with running(StepConsumer(config, load_handler("fetch-order", config))):
            produce(config, found, missing)
            results = {r.causation_id: r for r in reader.take(2)}
    ok, absent = results[found.event_id], results[missing.event_id]
    assert isinstance(ok, OrderFetched) and ok.payload.found and ok.payload.order is not None
    assert ok.payload.order.shipping_cost_cents == 899 and ok.payload.order.carrier == "UPS"
    assert isinstance(absent, OrderFetched) and not absent.payload.found and absent.payload.order is None

    down = topics.with_settings(order_service_url=f"http://127.0.0.1:{free_port()}")
    command = fetch_order("A-1001")
    retry = RetryPolicy(tries=2, base_delay=0.01, max_delay=0.02)
    with running(StepConsumer(down, load_handler("fetch-order", down, timeout=1.0), retry=retry)):
        produce(down, command)
        (failed,) = reader.take(1)
    assert isinstance(failed, StepFailed) and failed.payload.retryable
    assert "unreachable" in failed.payload.reason and failed.payload.step == "fetch-order"


def test_fetch_refund_policy_versions_and_default(topics: Config) -> None:
    reader = Reader(topics)
    current = fetch_policy("refund_request")
    older = fetch_policy("refund_request", at=datetime(2026, 5, 1, tzinfo=UTC))
    unknown = fetch_policy("alien_abduction")
    with running(StepConsumer(topics, load_handler("fetch-refund-policy", topics))):
        produce(topics, current, older, unknown)
        results = {r.causation_id: r for r in reader.take(3)}
    policies = [results[c.event_id] for c in (current, older, unknown)]
    assert all(isinstance(p, RefundPolicyFetched) for p in policies)
    now_policy, old_policy, fallback = (p.payload.policy for p in policies)
    assert now_policy.version == "refund_request/2026-10-01" and now_policy.max_refund_cents >= 899
    assert old_policy.version == "refund_request/2026-01-01"
    assert fallback.category == "default" and fallback.max_refund_cents == 0


def test_policy_file_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("default_category: default\npolicies:\n  default:\n    - version: v1\n")
    with pytest.raises(PolicyFileError, match="default"):
        load_policies(bad)
    assert load_policies(DEFAULT_POLICY_FILE).default_category == "default"


def test_fetch_order_by_customer_passes_on_only_their_open_orders(topics: Config) -> None:
    orders = load_orders()
    jane = orders["A-1001"]
    extra = {
        "A-2001": jane.model_copy(update={"order_id": "A-2001", "status": "delivered"}),  # closed
        "A-2002": jane.model_copy(update={"order_id": "A-2002", "status": "processing"}),
    }

    def by_customer(customer: str) -> FetchOrder:
        corr = f"c-{uuid.uuid4().hex[:8]}"
        cid = command_id(corr, "fetch-order", 1)
        return FetchOrder(
            event_id=derive_id(cid, "event"), correlation_id=corr, occurred_at=datetime.now(UTC),
            payload=FetchOrderPayload(command_id=cid, attempt=1, customer=customer),
        )  # fmt: skip

    reader = Reader(topics)
    with OrderService(port=0, orders={**orders, **extra}) as service:
        config = topics.with_settings(order_service_url=service.url)
        mine, nobody, bad = by_customer("Jane Doe <jane@example.com>"), by_customer("x@nowhere.example"), by_customer("a@x, b@y")
        with running(StepConsumer(config, load_handler("fetch-order", config))):
            produce(config, mine, nobody, bad)
            results = {r.causation_id: r for r in reader.take(3)}
    found = results[mine.event_id]
    assert isinstance(found, OrderFetched) and found.payload.customer == "jane@example.com"
    assert [o.order_id for o in found.payload.orders] == ["A-1001", "A-2002"] and found.payload.found
    assert found.payload.order_id is None and found.payload.order is None
    empty = results[nobody.event_id]
    assert isinstance(empty, OrderFetched) and empty.payload.orders == [] and not empty.payload.found
    refused = results[bad.event_id]
    assert isinstance(refused, StepFailed) and not refused.payload.retryable and "customer" in refused.payload.reason
