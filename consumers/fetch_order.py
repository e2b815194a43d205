"""fetch-order: `GET {order_service_url}/orders/{id}` over httpx.

404 is a normal result (`found=False`; the PM's rules escalate); timeouts, connection
errors, 429 and 5xx are transient (the base retries them); anything else, or a body that
is not an `Order`, is permanent.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from customer_email.events import Order, OrderFetched, OrderFetchedPayload, Step
from customer_email.settings import EmailSettings
from pm.config import Config
from pm.events import Event
from pm.steps.handler import PermanentError, TransientError, result_event

__all__ = ["FetchOrderHandler", "build_handler"]


class FetchOrderHandler:
    step = Step.FETCH_ORDER

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        # One client for all worker threads: httpx.Client is thread-safe and pools connections.
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def handle(self, command: Event, now: datetime) -> Event:
        payload = command.payload
        order_id = payload.order_id
        try:
            response = self.client.get(f"/orders/{quote(order_id, safe='')}")
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            raise TransientError(f"order service unreachable: {type(exc).__name__}: {exc}") from exc
        order: Order | None = None
        if response.status_code == 404:
            found = False
        elif response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"order service answered HTTP {response.status_code}")
        elif response.status_code != 200:
            raise PermanentError(f"order service answered HTTP {response.status_code}", [response.text[:500]])
        else:
            try:
                order = Order.model_validate_json(response.content)
            except ValidationError as exc:
                raise PermanentError(
                    "order service returned something that is not an order",
                    [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()],
                ) from exc
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

    def close(self) -> None:
        self.client.close()


def build_handler(config: Config, *, timeout: float = 5.0) -> FetchOrderHandler:
    return FetchOrderHandler(EmailSettings.of(config).order_service_url, timeout=timeout)
