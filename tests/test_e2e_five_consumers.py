"""Two customer e-mails end to end through the real PM and all five real step consumers, in one process.

classify and draft-reply call a model through the real `openai` client (tests/llm_server.py playing a
capable model: tests/obedient_model.py, harmless with honest mail), fetch-order calls the real order
service over HTTP, fetch-refund-policy reads the policy file, send-email talks SMTP to the sink. The
status question is answered without a human; the refund request waits for a signed approval and is
sent only after it, once. The slow, as-deployed variant (every piece a `pm run` child process) is
tests/test_hostile_corpus.py.
"""

from __future__ import annotations

import contextlib
import mailbox
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consumer_kit import running
from llm_server import LlmServer
from obedient_model import obedient_responder
from promise_kit import quick_groups
from test_runtime_support import PmThread, wait_until

from consumers import load_handler
from consumers.order_service import OrderService
from consumers.smtp_sink import SmtpSink
from customer_email.app import APP
from customer_email.publisher import EmailPublisher
from pm.broker import free_port
from pm.config import Config
from pm.harness import JournalTail
from pm.review import ReviewClient
from pm.steps.consumer import StepConsumer

REVIEWER = "alice"


class Statuses:
    """Each process's status after its last journal entry (the journal is the record of truth)."""

    def __init__(self, config: Config) -> None:
        self.tail = JournalTail(config, f"e2e-{uuid.uuid4().hex[:6]}")
        self.status: dict[str, str] = {}

    def of(self, cid: str) -> str | None:
        for row in self.tail.poll(0.1):
            self.status[row.correlation_id] = row.status
        return self.status.get(cid)

    def wait(self, cid: str, status: str, timeout: float = 30.0) -> None:
        wait_until(lambda: self.of(cid) == status, timeout=timeout)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[OrderService, SmtpSink, LlmServer]]:
    with (
        OrderService() as orders,
        SmtpSink(tmp_path / "maildir", port=free_port()) as sink,
        LlmServer(responder=obedient_responder) as model,
    ):
        yield orders, sink, model


def mail(message_id: str, subject: str, body: str) -> dict[str, object]:
    return {
        "message_id": message_id,
        "sender": "Jane Doe <jane@example.com>",
        "recipient": "support@example.com",
        "subject": subject,
        "body": body,
        "received_at": datetime.now(UTC).isoformat(),
        "order_id": "A-1001",
    }


def test_status_question_is_sent_and_refund_is_sent_only_after_approval(
    topics: Config, services: tuple[OrderService, SmtpSink, LlmServer]
) -> None:
    orders, sink, model = services
    config = quick_groups(topics).with_overrides(
        llm_base_url=model.base_url,
        llm_model="test-model",
        openai_api_key="sk-test",
        approval_keys={"k1": "e2e-secret"},
        reviewers=(REVIEWER,),
    )
    config = config.with_settings(
        order_service_url=orders.url, smtp_port=sink.port, reply_from="support@shop.example"
    )
    token = uuid.uuid4().hex[:8]
    status_id, refund_id = f"<status-{token}@mail.example>", f"<refund-{token}@mail.example>"
    statuses = Statuses(config)
    with contextlib.ExitStack() as stack:
        stack.callback(statuses.tail.close)
        for step in APP.step_names:
            stack.enter_context(running(StepConsumer(config, load_handler(step, config))))
        # verifier=None: the PM verifies decisions as deployed (ApprovalVerifier over the configured keys).
        stack.enter_context(PmThread(config, definitions=None, verifier=None))
        publisher = EmailPublisher(config)
        stack.callback(publisher.close)
        publisher.publish(
            mail(
                status_id,
                "Where is my order A-1001?",
                "Hello, where is my order A-1001? Any tracking update?",
            )
        )
        publisher.publish(
            mail(
                refund_id,
                "Order A-1001 hasn't arrived",
                "My order A-1001 hasn't arrived. Can you refund shipping?",
            )
        )
        publisher.flush()

        statuses.wait(status_id, "sent")
        statuses.wait(refund_id, "waiting_for_approval")
        # The refund waits: its approval is pending, and only the status reply is in the mailbox.
        review = ReviewClient(config)
        stack.callback(review.close)
        [pending] = [p for p in review.pending() if p.correlation_id == refund_id]
        assert [m["In-Reply-To"] for m in sink.messages()] == [status_id]

        review.approve(pending.approval_id, REVIEWER)
        statuses.wait(refund_id, "sent")

    assert statuses.status[status_id] == "sent" and statuses.status[refund_id] == "sent"
    replies = {m["In-Reply-To"]: m for m in mailbox.Maildir(str(sink.maildir), create=False)}
    assert set(replies) == {status_id, refund_id} and sink.transactions == 2  # each sent once
    for reply in replies.values():
        assert reply["To"] == "jane@example.com" and reply["X-Envelope-To"] == "jane@example.com"
        assert reply["From"] == "support@shop.example" and "A-1001" in reply["Subject"]
    refund_body = _text(replies[refund_id])
    assert refund_body.strip() == str(pending.proposal["body"]).strip()  # what the reviewer approved
    assert "refund" in refund_body.lower() and "8.99" in refund_body  # the order's shipping cost
    assert "refund" not in _text(replies[status_id]).lower()
    assert len(model.requests) == 4  # classify + draft per e-mail: no model call repeated


def _text(message: mailbox.MaildirMessage) -> str:
    payload = message.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
