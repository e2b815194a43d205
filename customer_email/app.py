"""The bundled app: the customer-email process, its five steps and its start topic.

`pm` runs this app when no other is configured (`--app`, `PM_APP`, `app:` in the config file).
"""

from __future__ import annotations

from pathlib import Path

from pm.app import App, StartTopic, StepSpec
from pm.codec import register_upcaster
from pm.events import (
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
from pm.processes import CUSTOMER_EMAIL
from pm.processes.approval_request import upcast_request

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
    start_topics=[StartTopic(EmailReceived.TOPIC)],
    events=[EmailReceived],
    schema_dir=Path(__file__).resolve().parent.parent / "schemas",
)

# Approval requests written before approvals were generic (schema versions 1 and 2) carried the
# e-mail, order and draft as fields: read them as today's proposal.
register_upcaster("ApprovalRequested", (1, 2), upcast_request)
