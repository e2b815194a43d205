"""`consumers.http_client` and fetch-order's handling of what a service answers, against a scripted
HTTP server: kept connections, a kept connection the server closed, bounded bodies, timeouts and
statuses."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from consumer_kit import fetch_order

from consumers import http_client
from consumers.fetch_order import FetchOrderHandler
from consumers.http_client import HttpBodyTooLarge, HttpGetClient, HttpUnavailable
from customer_email.events import OrderFetched
from pm.broker import free_port
from pm.steps.handler import PermanentError, TransientError

ORDER = {
    "order_id": "A-1001",
    "customer_email": "jane@example.com",
    "customer_name": "Jane Doe",
    "carrier": "UPS",
    "status": "shipped",
    "shipped_at": "2026-11-16T09:30:00Z",
    "expected_delivery": "2026-11-20T18:00:00Z",
    "total_cents": 5499,
    "shipping_cost_cents": 899,
    "currency": "USD",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a response says otherwise

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # A number per accepted connection (one handler per connection): `id(self.connection)` was reused
        # by the next socket once the first was freed, so two connections could look like one.
        self.connection_number = next(self.server.connections)  # type: ignore[attr-defined]

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if "Transfer_Encoding" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        server.requests.append((self.path, self.connection_number))
        path = self.path.split("?")[0]
        if path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"nope")
        elif path == "/orders/A-1001":
            self._send(200, json.dumps(ORDER).encode())
        elif path == "/orders/garbage":
            self._send(200, b"<html>not an order</html>")
        elif path == "/close":
            self._send(200, b"{}", Connection="close")
            self.close_connection = True
        elif path == "/big":
            self._send(200, b"x" * 5000)
        elif path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/early-hints":  # an informational reply before the answer
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self._send(200, b'{"early": "hints"}')
        elif path == "/twice":  # a broken server: its answer, then the same bytes again
            body = b'{"answer": "twice"}'
            raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            self.wfile.write(raw)
            self.wfile.flush()
            time.sleep(0.05)  # apart: the client has read its answer when the copy arrives
            self.wfile.write(raw)
        elif path == "/odd-length":  # a Latin-1 digit that int() refuses
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}")
            self.close_connection = True
        elif path == "/cut-short":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 30)
            self.close_connection = True
        elif path == "/orders/B-1":  # another order than the one asked for
            self._send(200, json.dumps(ORDER).encode())
        elif path == "/trickle":  # a byte per 0.1 s: every wait short, the whole answer ~20 s
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
            try:
                for _ in range(200):
                    self.wfile.write(b"t")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the client gave up
        elif path == "/slow":
            time.sleep(1.0)
            self._send(200, b"{}")
        else:
            self._send(404, b"not found")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, int]]
    connections: Iterator[int]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses a body hangs up mid-write: expected here, not worth a traceback


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", free_port()), _Handler)
    httpd.requests = []
    httpd.connections = itertools.count()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_requests_share_a_kept_connection_and_a_closing_reply_reopens_it(server: _Server) -> None:
    client = HttpGetClient(_url(server))
    replies = [client.get("/orders/A-1001", params={"q": "a b&c"}) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200] and json.loads(replies[0].body) == ORDER
    assert server.requests[0][0] == "/orders/A-1001?q=a+b%26c"
    assert len({conn for _, conn in server.requests}) == 1  # one connection for the three
    assert client.get("/close").status == 200
    assert client.get("/orders/A-1001").status == 200
    assert len({conn for _, conn in server.requests}) == 2  # the server closed it: a new one
    client.close()


def test_a_kept_connection_the_server_dropped_is_replaced_once(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = HttpGetClient(_url(server))
    assert client.get("/orders/A-1001").status == 200
    kept = client._local.connection
    assert kept is not None and kept.sock is not None
    kept.sock.shutdown(2)  # as a server that closed an idle connection leaves it: the next send fails
    assert client.get("/orders/A-1001").status == 200  # seen closed before the send: a new connection
    # Closed between that check and the send (the check cannot see it coming): the send fails and the
    # request goes once more on a new connection.
    kept = client._local.connection
    assert kept is not None and kept.sock is not None
    kept.sock.shutdown(2)
    monkeypatch.setattr(http_client, "_idle_and_open", lambda connection: True)
    assert client.get("/orders/A-1001").status == 200
    assert len(server.requests) == 3
    client.close()


def test_bodies_over_the_limit_are_refused_without_reading_them_whole(server: _Server) -> None:
    client = HttpGetClient(_url(server), max_body_bytes=4096)
    with pytest.raises(HttpBodyTooLarge, match="5000 bytes"):
        client.get("/big")
    with pytest.raises(HttpBodyTooLarge, match="over 4096"):
        client.get("/chunked-big")
    assert client.get("/orders/A-1001").status == 200  # a fresh connection after the refusals


def test_the_answer_read_is_always_this_requests(server: _Server) -> None:
    # http.client alone took a 103 for the answer and left the real one for the next request; and read
    # stray bytes on a kept connection as the next answer. Either handed a request another's answer.
    client = HttpGetClient(_url(server))
    assert client.get("/early-hints").body == b'{"early": "hints"}'
    assert json.loads(client.get("/orders/A-1001").body) == ORDER
    assert client.get("/twice").body == b'{"answer": "twice"}'
    time.sleep(0.1)  # the stray copy has arrived
    assert json.loads(client.get("/orders/A-1001").body) == ORDER  # not the stray copy
    client.close()


def test_an_odd_length_is_read_to_the_close_and_a_cut_short_answer_is_unavailable(server: _Server) -> None:
    client = HttpGetClient(_url(server))
    # A Content-Length int() refuses: read to the end of the connection, as http.client does (it used to
    # escape as a ValueError from the client's own parse).
    assert client.get("/odd-length").body == b"{}"
    with pytest.raises(HttpUnavailable, match="70 short"):
        client.get("/cut-short")
    assert client.get("/orders/A-1001").status == 200


def test_a_trickling_answer_ends_at_the_requests_deadline(server: _Server) -> None:
    client = HttpGetClient(_url(server), timeout=0.5, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(HttpUnavailable, match="no whole answer within 1 s"):
        client.get("/trickle")
    assert time.monotonic() - started < 10  # the trickle alone takes 20 s
    assert client.get("/orders/A-1001").status == 200  # a fresh connection afterwards


def test_no_answer_is_unavailable(server: _Server) -> None:
    with pytest.raises(HttpUnavailable, match="(?i)timed? ?out"):
        HttpGetClient(_url(server), timeout=0.2).get("/slow")
    with pytest.raises(HttpUnavailable, match="Refused"):
        HttpGetClient(f"http://127.0.0.1:{free_port()}").get("/orders/A-1001")
    with pytest.raises(ValueError, match="http"):
        HttpGetClient("ftp://example.com")


def _handle(server: _Server, order_id: str) -> Any:
    command = fetch_order(order_id)
    return FetchOrderHandler(_url(server), timeout=2.0).handle(command, datetime.now(UTC))


@pytest.mark.parametrize(
    ("status", "expected"),
    [(503, TransientError), (429, TransientError), (400, PermanentError), (302, PermanentError)],
)
def test_fetch_order_judges_the_status(server: _Server, status: int, expected: type[Exception]) -> None:
    handler = FetchOrderHandler(_url(server))
    reply = handler._get(f"/status/{status}")
    assert reply.status == status  # a redirect is not followed
    with pytest.raises(expected):
        handler._check(reply)


def test_fetch_order_refuses_a_body_that_is_not_an_order_and_one_too_large(server: _Server) -> None:
    with pytest.raises(PermanentError, match="not an order"):
        _handle(server, "garbage")
    handler = FetchOrderHandler(_url(server))
    handler.client.max_body_bytes = 4096
    with pytest.raises(PermanentError, match="over 4096"):
        handler._get("/chunked-big")


def test_fetch_order_refuses_an_answer_for_another_order(server: _Server) -> None:
    with pytest.raises(TransientError, match="'A-1001' for 'B-1'"):
        _handle(server, "B-1")


def test_fetch_order_found_and_missing(server: _Server) -> None:
    found = _handle(server, "A-1001")
    assert isinstance(found, OrderFetched) and found.payload.found and found.payload.order is not None
    missing = _handle(server, "A-404")
    assert isinstance(missing, OrderFetched) and not missing.payload.found
