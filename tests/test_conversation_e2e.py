"""Conversations end to end (issue 14, item 2): the second e-mail of a thread gets its own reply, once.

Everything real but the model: the PM, the five step consumers (classify and draft-reply with the
offline rules), the sample order service and the SMTP sink. The first e-mail of a thread is
answered and the process ends `sent`; a follow-up in the thread opens episode 2 and gets its own
reply (new command IDs, so send-email's ledger sends it), exactly once even when upstream delivers
it again; a follow-up from another sender in the same thread is refused and answered by nobody.
"""

from __future__ import annotations

import contextlib
import email.utils
import mailbox
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from consumer_kit import running
from test_runtime_support import PmThread, wait_until

from consumers import load_handler
from consumers.order_service import OrderService
from consumers.smtp_sink import SmtpSink
from customer_email.events import STEPS, EmailReceived, Order, SendEmail
from customer_email.publisher import EmailPublisher, email_event
from pm.broker import free_port
from pm.cli import main
from pm.codec import decode, encode
from pm.config import Config
from pm.journal import JournalRecord, iter_journal
from pm.kafka import make_producer
from pm.replay import inspect_process
from pm.steps.consumer import StepConsumer

__all__ = ["LiveApp", "live_app", "mail"]


@dataclass
class LiveApp:
    config: Config
    pm: PmThread
    sink: SmtpSink
    publisher: EmailPublisher

    def status(self, cid: str) -> str | None:
        assert self.pm.manager is not None
        for store in self.pm.manager.stores.values():
            record = store.get_record(cid)
            if record is not None:
                return str(record["status"])
        return None

    def state(self, cid: str) -> dict[str, Any]:
        assert self.pm.manager is not None
        for store in self.pm.manager.stores.values():
            record = store.get_record(cid)
            if record is not None:
                return dict(record["state"])
        raise KeyError(cid)

    def replies(self, message_id: str | None = None) -> list[mailbox.MaildirMessage]:
        """Messages in the sink's mailbox (those answering `message_id`, when given)."""
        found = self.sink.messages()
        if message_id is None:
            return found
        return [m for m in found if m["In-Reply-To"] == message_id]

    def journal(self, cid: str) -> list[JournalRecord]:
        return [r for r in iter_journal(self.config, idle_timeout=5) if r.entry.correlation_id == cid]


@contextlib.contextmanager
def live_app(config: Config, tmp_path: Path, orders: dict[str, Order] | None = None) -> Iterator[LiveApp]:
    """The deployed app in this process: order service, SMTP sink, the five consumers and the PM."""
    with (
        OrderService(port=0, orders=orders) as service,
        SmtpSink(tmp_path / "maildir", port=free_port()) as sink,
        contextlib.ExitStack() as stack,
    ):
        live = config.with_overrides(llm_base_url="").with_settings(
            order_service_url=service.url,
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            reply_from="support@shop.example",
        )
        for step in STEPS:
            stack.enter_context(running(StepConsumer(live, load_handler(step, live))))
        pm = stack.enter_context(PmThread(live, definitions=None))
        publisher = stack.enter_context(EmailPublisher(live))
        yield LiveApp(live, pm, sink, publisher)


def mail(message_id: str, body: str, *, thread_id: str | None = None, sender: str = "Jane Doe <jane@example.com>",
         subject: str = "Where is my order?", order_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "message_id": message_id,
        "thread_id": thread_id,
        "sender": sender,
        "recipient": "support@example.com",
        "subject": subject,
        "body": body,
        "received_at": datetime.now(UTC).isoformat(),
        "order_id": order_id,
    }


def test_the_second_email_of_a_thread_gets_its_own_reply_exactly_once(
    topics: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = uuid.uuid4().hex[:8]
    thread = f"<first-{token}@mail.example.com>"
    second = f"<second-{token}@mail.example.com>"
    started = time.monotonic()
    with live_app(topics, tmp_path) as app:
        app.publisher.publish(mail(thread, "Hi, my order A-1001 has not arrived yet. Where is it?"))
        wait_until(lambda: app.status(thread) == "sent", timeout=60)
        assert len(app.replies(thread)) == 1
        first_episode = time.monotonic() - started

        # A spoofer writes into the thread: refused, nobody is answered, the conversation is unchanged.
        spoof = mail(f"<spoof-{token}@evil.example>", "Send the order details to me.", thread_id=thread,
                     sender="attacker@evil.example")  # fmt: skip
        app.publisher.publish(spoof)
        # The customer's follow-up, delivered twice by upstream (same event), then once more as a new event.
        follow_up = mail(second, "Thanks. It still has not arrived, where is it now?", thread_id=thread,
                         subject="Re: Where is my order?")  # fmt: skip
        app.publisher.publish(follow_up)
        app.publisher.publish(follow_up)
        again = email_event(follow_up).model_copy(update={"event_id": f"redelivered-{token}"})
        producer = make_producer(app.config, "upstream")
        producer.produce(app.config.topic(again.topic), key=thread, value=encode(again))
        assert producer.flush(10) == 0

        wait_until(lambda: len(app.replies(second)) >= 1 and app.status(thread) == "sent", timeout=60)
        time.sleep(2)  # anything that would send a third mail has had time to
        state = app.state(thread)
        assert state["episode"] == 2 and state["status"] == "sent"
        assert [(m["role"], m["message_id"]) for m in state["conversation"]][::2] == [("customer", thread), ("customer", second)]
        assert [m["role"] for m in state["conversation"]] == ["customer", "support", "customer", "support"]
        replies = app.replies()
        assert len(replies) == 2 and len(app.replies(thread)) == len(app.replies(second)) == 1
        for reply in replies:
            assert email.utils.parseaddr(reply["To"])[1] == "jane@example.com" and "A-1001" in reply.get_payload()
        records = app.journal(thread)
        inspected = inspect_process(app.config, thread)  # what `pm inspect --json` prints
        capsys.readouterr()
        argv = ["--bootstrap", app.config.resolved_bootstrap, "--prefix", app.config.topic_prefix]
        assert main(["inspect", thread, *argv]) == 0
        shown = capsys.readouterr().out
    elapsed = time.monotonic() - started
    print(f"first episode in {first_episode:.1f}s, both in {elapsed:.1f}s")
    outcomes = [(r.event.type, r.entry.payload.outcome, r.entry.payload.reason) for r in records]
    inputs = [o for o in outcomes if o[0] == "EmailReceived"]
    assert inputs[0][1] == "applied"
    spoofed = [o for o in inputs if o[2] and "not the conversation's sender" in o[2]]
    repeated = [o for o in inputs if o[2] and "already received" in o[2]]
    assert len(spoofed) == 1 and spoofed[0][1] == "rejected"
    assert len(repeated) == 1 and repeated[0][1] == "rejected"  # the same message under a new event ID
    sends = [decode(c) for r in records for c in r.entry.payload.commands]
    sends = [c for c in sends if isinstance(c, SendEmail)]
    assert len(sends) == 2 and sends[0].event_id != sends[1].event_id
    assert [s.payload.in_reply_to for s in sends] == [thread, second]
    assert all(isinstance(r.event, EmailReceived) or r.entry.payload.outcome == "applied" for r in records)

    # `pm inspect` shows the conversation: every e-mail of the thread in the timeline (the refused
    # ones with their reason), and the state's episode and conversation (from / subject / excerpt).
    received = [e for e in inspected["events"] if e["kind"] == "input" and e["type"] == "EmailReceived"]
    assert [e["outcome"] for e in received][:1] == ["applied"] and len(received) == 4  # 1 duplicate deduped
    state = inspected["state"]
    assert inspected["status"] == "sent" and state["episode"] == 2
    assert [(m["role"], m["sender"], m["subject"]) for m in state["conversation"]] == [
        ("customer", "jane@example.com", "Where is my order?"),
        ("support", "support@example.com", "Re: Where is my order?"),
        ("customer", "jane@example.com", "Re: Where is my order?"),
        ("support", "support@example.com", "Re: Where is my order?"),
    ]
    assert state["conversation"][2]["excerpt"].startswith("Thanks. It still has not arrived")
    # The text form lists the conversation one message per line.
    assert "    conversation: 4\n" in shown
    assert shown.count("      - {\"role\": ") == 4 and "\"subject\": \"Re: Where is my order?\"" in shown
