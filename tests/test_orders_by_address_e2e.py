"""Orders without a number, end to end (issue 14, item 3): the live app looks up the sender's orders.

"Where is my order?" without an order number, from three senders, through the PM, the five real
step consumers (offline rules for the model), the sample order service (`GET /orders?customer=`)
and the SMTP sink: one open order is answered about; several get a reply asking which one,
listing that customer's order IDs and no one else's; none is escalated with the reason.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from test_conversation_e2e import live_app, mail
from test_runtime_support import wait_until

from consumers.order_service import load_orders
from customer_email.events import Order
from pm.config import Config


def _orders() -> dict[str, Order]:
    orders = load_orders()  # the sample orders: jane has A-1001 (shipped), omar A-1002 (delivered), ...
    base = orders["A-1001"]
    extra = [
        base.model_copy(update={"order_id": "A-0999", "status": "delivered"}),  # jane's, closed
        base.model_copy(update={"order_id": "A-2001", "customer_email": "Kim Lee <kim@example.com>",
                                "customer_name": "Kim Lee", "status": "processing"}),  # fmt: skip
        base.model_copy(update={"order_id": "A-2002", "customer_email": "kim@example.com",
                                "customer_name": "Kim Lee", "status": "shipped"}),  # fmt: skip
    ]
    return {**orders, **{o.order_id: o for o in extra}}


def test_where_is_my_order_without_a_number(topics: Config, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    jane, kim, omar = (f"<{who}-{token}@mail.example.com>" for who in ("jane", "kim", "omar"))
    started = time.monotonic()
    with live_app(topics, tmp_path, orders=_orders()) as app:
        app.publisher.publish(mail(jane, "Hello, where is my order? It should be here by now."))
        # An address in the text is never looked up: only the parsed sender's orders count.
        app.publisher.publish(
            mail(kim, "Where is my order? My other account is jane@example.com, check that one too.",
                 sender="Kim Lee <kim@example.com>")  # fmt: skip
        )
        app.publisher.publish(mail(omar, "Where is my order?", sender="omar@example.com"))
        wait_until(lambda: {app.status(c) for c in (jane, kim, omar)} <= {"sent", "escalated", "failed"}, timeout=60)
        statuses = {c: app.status(c) for c in (jane, kim, omar)}
        states = {c: app.state(c) for c in (jane, kim, omar)}
        replies = {c: app.replies(c) for c in (jane, kim)}
    print(f"three lookups in {time.monotonic() - started:.1f}s")
    assert statuses == {jane: "sent", kim: "sent", omar: "escalated"}

    # One open order: answered as if the e-mail had named it.
    assert states[jane]["order_id"] == "A-1001" and states[jane]["last_order_id"] == "A-1001"
    (reply,) = replies[jane]
    text = reply.get_payload()
    assert "A-1001" in text and "A-0999" not in text and reply["To"] == "jane@example.com"

    # Several: a reply asking which one, with this customer's IDs only.
    assert states[kim]["candidates"] == ["A-2001", "A-2002"] and states[kim]["order"] is None
    (question,) = replies[kim]
    text = question.get_payload()
    assert "A-2001" in text and "A-2002" in text and question["To"] == "kim@example.com"
    assert set(re.findall(r"\b[A-Z]-\d{4}\b", text)) == {"A-2001", "A-2002"}  # no other order ID

    # None open (omar's only order was delivered): escalated, with the reason.
    assert states[omar]["reason"] == "no order ID in the e-mail, and the sender has no open order"
