"""The bundled app: the customer-email process, its five steps and its start topic.

`pm` runs this app when no other is configured (`--app`, `PM_APP`, `app:` in the config file).
"""

from __future__ import annotations

from pathlib import Path

from customer_email import CUSTOMER_EMAIL
from customer_email.approval_request import upcast_request
from customer_email.events import (
    ClassifyEmail,
    DraftReply,
    EmailClassified,
    EmailReceived,
    EmailSent,
    FetchOrder,
    FetchRefundPolicy,
    OrderFetched,
    RefundPolicyFetched,
    ReplyDrafted,
    SendEmail,
)
from pm.app import App, StartTopic, StepSpec
from pm.codec import register_upcaster
from pm.telemetry import add_sensitive_keys

__all__ = ["APP", "LLM_OPTIONS"]

# The LLM steps take rate limits and an artificial latency (benchmarks) from `pm run consumer`.
LLM_OPTIONS = ("rpm", "tpm", "llm_latency_ms")

APP = App(
    name="customer-email",
    processes=[CUSTOMER_EMAIL],
    steps=[
        StepSpec("classify", ClassifyEmail, (EmailClassified,), "consumers.classify:build_handler", LLM_OPTIONS),
        StepSpec("fetch-order", FetchOrder, (OrderFetched,), "consumers.fetch_order:build_handler"),
        StepSpec(
            "fetch-refund-policy",
            FetchRefundPolicy,
            (RefundPolicyFetched,),
            "consumers.fetch_refund_policy:build_handler",
        ),
        StepSpec(
            "draft-reply", DraftReply, (ReplyDrafted,), "consumers.draft_reply:build_handler", LLM_OPTIONS
        ),
        StepSpec("send-email", SendEmail, (EmailSent,), "consumers.send_email:build_handler"),
    ],
    start_topics=[StartTopic(EmailReceived.TOPIC, alias="email", parse="customer_email.publisher:parse_email_line")],
    events=[EmailReceived],
    schema_dir=Path(__file__).resolve().parent.parent / "schemas",
    services={"order-service": "consumers.order_service:main", "smtp-sink": "consumers.smtp_sink:main"},
    demo="customer_email.demo:run_demo",
)

# Approval requests written before approvals were generic (schema versions 1 and 2) carried the
# e-mail, order and draft as fields: read them as today's proposal.
register_upcaster("ApprovalRequested", (1, 2), upcast_request)

# Personal data in this app's payloads, kept out of telemetry when redaction is on.
add_sensitive_keys("email", "customer_email", "customer_name", "draft")
