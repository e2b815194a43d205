"""A small HTTP order service for the demo and tests: `GET /orders/<id>` -> JSON `Order` or 404.

`GET /orders?customer=<address>` -> `{"customer": <address>, "orders": [Order, ...]}`: the orders
of that one customer (matched on the parsed address, `customer_email.addresses`), in file order;
an address that does not parse is a 400, and `/orders` without a customer lists nothing (400):
no request lists other customers' orders. Orders come from a JSON file
(`consumers/data/orders.json` by default), validated with the `Order` model at start-up.
`GET /health` answers `{"status": "ok"}`. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from customer_email.addresses import AddressError, parse_address, same_address
from customer_email.events import Order
from customer_email.settings import EmailSettings
from pm.config import Config
from pm.errors import PmError
from pm.signals import stop_on_signals

__all__ = ["DEFAULT_ORDERS_FILE", "OrderFileError", "OrderService", "load_orders", "main"]

DEFAULT_ORDERS_FILE = Path(__file__).parent / "data" / "orders.json"


class OrderFileError(PmError):
    """The orders file is missing or malformed."""


def load_orders(path: Path = DEFAULT_ORDERS_FILE) -> dict[str, Order]:
    try:
        data: Any = json.loads(path.read_text())
    except OSError as exc:
        raise OrderFileError(f"orders file {path}: {exc}") from exc
    except ValueError as exc:
        raise OrderFileError(f"orders file {path} is not valid JSON: {exc}") from exc
    items = data.get("orders") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise OrderFileError(f'orders file {path}: expected a list of orders (or {{"orders": [...]}})')
    orders: dict[str, Order] = {}
    for index, item in enumerate(items):
        try:
            order = Order.model_validate(item)
        except ValidationError as exc:
            raise OrderFileError(f"orders file {path}: order #{index + 1}: {exc}") from exc
        orders[order.order_id] = order
    return orders


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive: the fetch-order client pools connections; HTTP/1.0 made it connect (and resolve) per
    # request. Every reply sets Content-Length. An idle connection's thread ends after `timeout` s.
    protocol_version = "HTTP/1.1"
    timeout = 60

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if parts == ["health"]:
            self._reply(HTTPStatus.OK, {"status": "ok", "orders": len(self.server.orders)})
        elif parts == ["orders"]:
            self._customer_orders(parse_qs(url.query).get("customer", []))
        elif len(parts) == 2 and parts[0] == "orders":
            order = self.server.orders.get(parts[1])
            if order is None:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "order not found", "order_id": parts[1]})
            else:
                self._reply(HTTPStatus.OK, order.model_dump(mode="json"))
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "no such resource", "path": self.path})

    def _customer_orders(self, values: list[str]) -> None:
        if len(values) != 1:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "give exactly one customer=<address>"})
            return
        try:
            customer = parse_address(values[0], field="customer")
        except AddressError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        orders = [o for o in self.server.orders.values() if same_address(o.customer_email, customer)]
        self._reply(
            HTTPStatus.OK, {"customer": customer, "orders": [o.model_dump(mode="json") for o in orders]}
        )

    def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    orders: dict[str, Order]
    verbose: bool


class OrderService:
    """The HTTP server; `start()` serves in a background thread, `serve_forever()` in the caller's."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        orders: dict[str, Order] | None = None,
        verbose: bool = False,
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.orders = load_orders() if orders is None else orders
        self._server.verbose = verbose
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host if isinstance(host, str) else host.decode()}:{self.port}"

    def start(self) -> OrderService:
        self._thread = threading.Thread(target=self._server.serve_forever, name="order-service", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving (from another thread than `serve_forever`'s) and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OrderService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str], config: Config) -> int:
    """`pm run service order-service [--port N] [--host H] [--orders FILE]`: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="pm run service order-service", description="the sample order service")
    parser.add_argument("--port", type=int, default=None, help="default: the port of PM_ORDER_SERVICE_URL")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 inside a container)")
    parser.add_argument("--orders", type=Path, default=None, help="orders JSON file (default: the sample orders)")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else (urlsplit(EmailSettings.of(config).order_service_url).port or 8765)
    orders = load_orders(args.orders or DEFAULT_ORDERS_FILE)
    stop = stop_on_signals()
    try:
        service = OrderService(args.host, port, orders=orders).start()
    except OSError as exc:
        raise PmError(f"order service: cannot listen on {args.host}:{port}: {exc}") from exc
    print(f"order service: {service.url} ({len(orders)} orders)", flush=True)
    stop.wait()
    service.stop()
    print("order service: stopped", flush=True)
    return 0
