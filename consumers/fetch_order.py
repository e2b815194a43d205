"""fetch-order: `GET {order_service_url}/orders/{id}`, or the sender's open orders (`consumers.http_client`).

A command names either an order (`order_id`) or, when the e-mail named none, a customer: the
parsed sender address (`customer`, never an address from the text), looked up with
`GET /orders?customer=<address>`. Of the orders the service returns, only those of exactly that
address (parsed again here) that are still open are passed on, at most `MAX_CUSTOMER_ORDERS`:
the process's rules check them once more and decide (one: use it; several: ask; none: escalate).

404 is a normal result (`found=False`; the PM's rules escalate); timeouts, connection
errors, 429 and 5xx are transient (the base retries them); anything else, a body over 4 MiB, or
a body that is not an `Order` (or a list of them), is permanent.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from consumers.http_client import HttpBodyTooLarge, HttpGetClient, HttpReply, HttpUnavailable
from customer_email.addresses import AddressError, parse_address, same_address
from customer_email.events import Order, OrderFetched, OrderFetchedPayload, Step
from customer_email.settings import EmailSettings
from pm.config import Config
from pm.events import Event
from pm.steps.handler import PermanentError, TransientError, result_event

__all__ = ["MAX_CUSTOMER_ORDERS", "FetchOrderHandler", "build_handler"]

# Open orders passed on for one customer (the rules ask about at most 10, and escalate above).
MAX_CUSTOMER_ORDERS = 20


def _problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()][:20]


class FetchOrderHandler:
    step = Step.FETCH_ORDER

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        # One client for all worker threads: each thread keeps its own connection.
        self.client = HttpGetClient(base_url, timeout=timeout)

    def handle(self, command: Event, now: datetime) -> Event:
        payload = command.payload
        if payload.order_id is None:
            return self._by_customer(command, now)
        order_id = payload.order_id
        response = self._get(f"/orders/{quote(order_id, safe='')}")
        order: Order | None = None
        if response.status == 404:
            found = False
        else:
            self._check(response)
            try:
                order = Order.model_validate_json(response.body)
            except ValidationError as exc:
                raise PermanentError("order service returned something that is not an order", _problems(exc)) from exc
            if order.order_id.casefold() != order_id.casefold():
                # Another request's answer (a connection out of step) must never pass as this order.
                raise TransientError(f"order service answered with order {order.order_id!r} for {order_id!r}")
            found = True
        return result_event(
            command,
            OrderFetched,
            OrderFetchedPayload(
                command_id=payload.command_id,
                attempt=payload.attempt,
                order_id=order_id,
                found=found,
                order=order,
            ),
            now,
        )

    def _by_customer(self, command: Event, now: datetime) -> Event:
        payload = command.payload
        if payload.customer is None:
            raise PermanentError("fetch-order command names neither an order nor a customer")
        try:
            customer = parse_address(payload.customer, field="customer")
        except AddressError as exc:
            raise PermanentError(f"fetch-order command: {exc}") from exc
        response = self._get("/orders", params={"customer": customer})
        self._check(response)
        try:
            body: Any = json.loads(response.body)
        except ValueError as exc:
            raise PermanentError("order service answered with something that is not JSON") from exc
        items = body.get("orders") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise PermanentError('order service answered without a list of orders ({"orders": [...]})')
        orders: list[Order] = []
        for item in items:
            try:
                order = Order.model_validate(item)
            except ValidationError as exc:
                raise PermanentError("order service returned something that is not an order", _problems(exc)) from exc
            # Only this customer's open orders, whatever the service matched.
            if order.is_open() and same_address(order.customer_email, customer):
                orders.append(order)
        orders = orders[:MAX_CUSTOMER_ORDERS]
        return result_event(
            command,
            OrderFetched,
            OrderFetchedPayload(
                command_id=payload.command_id,
                attempt=payload.attempt,
                found=bool(orders),
                customer=customer,
                orders=orders,
            ),
            now,
        )

    def _get(self, path: str, params: dict[str, str] | None = None) -> HttpReply:
        try:
            return self.client.get(path, params=params)
        except HttpUnavailable as exc:  # refused, reset, timed out
            raise TransientError(f"order service unreachable: {exc}") from exc
        except HttpBodyTooLarge as exc:
            raise PermanentError(f"order service answered with {exc}") from exc

    @staticmethod
    def _check(response: HttpReply) -> None:
        if response.status == 429 or response.status >= 500:
            raise TransientError(f"order service answered HTTP {response.status}")
        if response.status != 200:
            raise PermanentError(f"order service answered HTTP {response.status}", [response.text[:500]])

    def close(self) -> None:
        self.client.close()


def build_handler(config: Config, *, timeout: float = 5.0) -> FetchOrderHandler:
    return FetchOrderHandler(EmailSettings.of(config).order_service_url, timeout=timeout)
