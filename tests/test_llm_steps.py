"""classify and draft-reply: the real `openai` client against a local OpenAI-compatible server, and the offline rules."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from llm_server import LlmServer, Scripted

from consumers import classify, draft_reply
from consumers.llm import (
    INVALID_OUTPUT_REASON,
    OFFLINE,
    OPENAI_COMPATIBLE,
    OfflineProvider,
    OpenAICompatibleProvider,
    choose_provider,
    strict_json_schema,
)
from consumers.llm_output import Classification, Draft
from consumers.offline import extract_order_id, offline_classification, offline_draft
from consumers.rate_limit import RateLimiter
from customer_email.events import (
    ClassifyEmail,
    ClassifyEmailPayload,
    ConversationMessage,
    DraftReply,
    DraftReplyPayload,
    Email,
    EmailClassified,
    Order,
    RefundPolicy,
    ReplyDrafted,
)
from customer_email.guard import check_draft, review_question
from pm.config import Config
from pm.events import StepFailed, command_id
from pm.steps.handler import PermanentError, TransientError

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CID = "msg-001@example.com"


def make_email(
    subject: str = "Where is my parcel?", body: str = "Hi, order A-1001 hasn't arrived yet.", **kw: Any
) -> Email:
    return Email(
        message_id=CID,
        sender="jane@example.com",
        recipient="support@shop.example",
        subject=subject,
        body=body,
        received_at=NOW,
        **kw,
    )


ORDER = Order(
    order_id="A-1001",
    customer_email="jane@example.com",
    customer_name="Jane Doe",
    carrier="DHL",
    status="shipped",
    shipped_at=datetime(2026, 2, 27, tzinfo=UTC),
    expected_delivery=datetime(2026, 3, 4, tzinfo=UTC),
    total_cents=5000,
    shipping_cost_cents=599,
)
REFUND_POLICY = RefundPolicy(
    category="refund_request",
    version="refund-2026-01",
    refund_shipping=True,
    max_refund_cents=2000,
    max_refund_ratio=0.5,
    allowed_promises=["refund_shipping", "reship"],
    summary="Shipping costs may be refunded; larger refunds need a human.",
)
NO_REFUND_POLICY = REFUND_POLICY.model_copy(
    update={
        "category": "delivery_status",
        "version": "delivery-2026-01",
        "refund_shipping": False,
        "allowed_promises": [],
    }
)


def classify_command(email: Email | None = None, attempt: int = 1) -> ClassifyEmail:
    cmd_id = command_id(CID, "classify", attempt)
    return ClassifyEmail(
        event_id=cmd_id,
        correlation_id=CID,
        causation_id="email-event",
        occurred_at=NOW,
        payload=ClassifyEmailPayload(command_id=cmd_id, attempt=attempt, email=email or make_email()),
    )


def draft_command(
    *,
    intent: str = "refund_request",
    order: Order | None = ORDER,
    policy: RefundPolicy = REFUND_POLICY,
    violations: list[str] | None = None,
    previous: Draft | None = None,
) -> DraftReply:
    cmd_id = command_id(CID, "draft-reply", 1)
    return DraftReply(
        event_id=cmd_id,
        correlation_id=CID,
        causation_id="policy-event",
        occurred_at=NOW,
        payload=DraftReplyPayload(
            command_id=cmd_id,
            attempt=1,
            email=make_email(subject="Refund please", body="I want my money back for order A-1001."),
            intent=intent,
            order=order,
            policy=policy,
            violations=violations or [],
            previous_draft=previous,
        ),
    )


GOOD_CLASSIFICATION = {"intent": "delivery_status", "risk": "low", "order_id": "A-1001", "confidence": 0.93}
GOOD_DRAFT = {
    "subject": "Re: Refund please",
    "body": "Dear Jane, we will refund the shipping cost of 5.99 USD for order A-1001. Kind regards, Support",
    "order_id": "A-1001",
    "refund_cents": 599,
    "promises": ["refund_shipping"],
}


@pytest.fixture
def server() -> Iterator[LlmServer]:
    with LlmServer() as srv:
        yield srv


@pytest.fixture
def llm_config(server: LlmServer, tmp_path: Any) -> Config:
    return Config(
        llm_base_url=server.base_url, llm_model="test-model-1", openai_api_key="sk-test", state_dir=tmp_path
    )


# ---------------------------------------------------------------- classify against the endpoint


def test_classify_good_output_records_the_call(server: LlmServer, llm_config: Config) -> None:
    server.reply_json(GOOD_CLASSIFICATION, prompt_tokens=123, completion_tokens=45)
    handler = classify.build_handler(llm_config)
    command = classify_command()

    result = handler.handle(command, NOW)

    assert isinstance(result, EmailClassified)
    p = result.payload
    assert (p.intent, p.risk, p.order_id, p.confidence) == ("delivery_status", "low", "A-1001", 0.93)
    assert (p.command_id, p.attempt) == (command.payload.command_id, 1)
    assert result.correlation_id == CID and result.causation_id == command.event_id
    assert p.llm.provider == OPENAI_COMPATIBLE
    assert p.llm.model == "test-model-1"
    assert (p.llm.prompt_tokens, p.llm.completion_tokens) == (123, 45)
    assert p.llm.raw_output == json.dumps(GOOD_CLASSIFICATION)
    assert p.llm.latency_ms >= 0
    # The recorded prompt is exactly the messages the endpoint received.
    (request,) = server.requests
    assert json.loads(p.llm.prompt) == request["messages"]
    assert request["messages"][0]["role"] == "system" and "A-1001" in request["messages"][1]["content"]
    assert "jane@example.com" not in p.llm.prompt
    assert request["model"] == "test-model-1"
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == strict_json_schema(Classification)


def test_classify_uses_upstream_order_id_when_model_finds_none(server: LlmServer, llm_config: Config) -> None:
    server.reply_json({**GOOD_CLASSIFICATION, "order_id": None})
    result = classify.build_handler(llm_config).handle(classify_command(make_email(order_id="B-7")), NOW)
    assert isinstance(result, EmailClassified) and result.payload.order_id == "B-7"


def test_classify_invalid_json_is_a_failed_result_with_errors(server: LlmServer, llm_config: Config) -> None:
    server.reply_text('{"intent": "delivery_status", "risk": ')
    result = classify.build_handler(llm_config).handle(classify_command(), NOW)

    assert isinstance(result, StepFailed)
    p = result.payload
    assert p.retryable is False and p.uncertain is False
    assert p.reason == INVALID_OUTPUT_REASON
    assert p.step == "classify"
    assert p.errors and any("json" in e.lower() for e in p.errors)
    assert p.llm is not None and p.llm.raw_output == '{"intent": "delivery_status", "risk": '
    assert p.llm.prompt_tokens == 11


def test_classify_schema_violation_is_a_failed_result_with_errors(
    server: LlmServer, llm_config: Config
) -> None:
    server.reply_json({"intent": "refund", "risk": "low", "order_id": None, "confidence": 1.5, "mood": "sad"})
    result = classify.build_handler(llm_config).handle(classify_command(), NOW)

    assert isinstance(result, StepFailed)
    errors = result.payload.errors
    assert any(e.startswith("intent:") for e in errors)
    assert any(e.startswith("confidence:") for e in errors)
    assert any(e.startswith("mood:") for e in errors)
    assert result.payload.llm is not None and '"mood"' in result.payload.llm.raw_output


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limit_and_server_errors_are_transient(
    server: LlmServer, llm_config: Config, status: int
) -> None:
    server.fail(status)
    handler = classify.build_handler(llm_config)
    with pytest.raises(TransientError, match=str(status)):
        handler.handle(classify_command(), NOW)
    assert len(server.requests) == 1  # the client does not retry on its own; the base does


def test_client_errors_are_permanent(server: LlmServer, llm_config: Config) -> None:
    server.fail(400, content="model does not support json_schema")
    with pytest.raises(PermanentError, match="400"):
        classify.build_handler(llm_config).handle(classify_command(), NOW)


def test_timeout_is_transient(server: LlmServer, llm_config: Config) -> None:
    server.reply_json(GOOD_CLASSIFICATION, delay=1.0)
    handler = classify.build_handler(llm_config, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TransientError):
        handler.handle(classify_command(), NOW)
    assert time.monotonic() - started < 0.9


def test_connection_refused_is_transient_never_offline(tmp_path: Any) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config(llm_base_url=f"http://127.0.0.1:{port}/v1", state_dir=tmp_path)
    handler = classify.build_handler(config, timeout=2.0)
    assert isinstance(handler.provider, OpenAICompatibleProvider)
    with pytest.raises(TransientError, match="unreachable"):
        handler.handle(classify_command(), NOW)


def test_wrong_command_type_is_permanent(llm_config: Config) -> None:
    with pytest.raises(PermanentError):
        classify.build_handler(llm_config).handle(draft_command(), NOW)
    with pytest.raises(PermanentError):
        draft_reply.build_handler(llm_config).handle(classify_command(), NOW)


def test_rate_limited_handler_spaces_calls(server: LlmServer, llm_config: Config) -> None:
    for _ in range(4):
        server.reply_json(GOOD_CLASSIFICATION)
    built = classify.build_handler(llm_config, rpm=600, tpm=100_000)
    assert (
        built.limiter is not None and built.limiter.requests is not None and built.limiter.tokens is not None
    )
    assert classify.build_handler(llm_config).limiter is None
    # 10 requests/s with a burst of one: the 2nd, 3rd and 4th call each wait 0.1 s.
    handler = classify.ClassifyHandler(
        OpenAICompatibleProvider(llm_config), RateLimiter(rpm=600, burst_seconds=0.1)
    )
    started = time.monotonic()
    for _ in range(4):
        assert isinstance(handler.handle(classify_command(), NOW), EmailClassified)
    assert 0.27 <= time.monotonic() - started < 2.0  # 3 waits of 0.1 s


# ---------------------------------------------------------------- draft-reply against the endpoint


def test_draft_good_output_and_prompt_facts(server: LlmServer, llm_config: Config) -> None:
    server.reply_json(GOOD_DRAFT, prompt_tokens=300, completion_tokens=80)
    result = draft_reply.build_handler(llm_config).handle(draft_command(), NOW)

    assert isinstance(result, ReplyDrafted)
    assert result.payload.draft == Draft.model_validate(GOOD_DRAFT)
    llm = result.payload.llm
    assert (llm.provider, llm.model, llm.prompt_tokens, llm.completion_tokens) == (
        OPENAI_COMPATIBLE,
        "test-model-1",
        300,
        80,
    )
    assert llm.raw_output == json.dumps(GOOD_DRAFT)
    (request,) = server.requests
    assert json.loads(llm.prompt) == request["messages"]
    facts = json.loads(request["messages"][1]["content"].split("Facts:\n", 1)[1])
    assert facts["intent"] == "refund_request"
    assert facts["order"]["order_id"] == "A-1001" and facts["order"]["carrier"] == "DHL"
    assert facts["policy"]["allowed_promises"] == ["refund_shipping", "reship"]
    assert facts["policy"]["refund_limit_cents"] == 2000
    assert facts["policy"]["shipping_refund_limit_cents"] == 599
    assert "previous draft" not in request["messages"][1]["content"].lower()
    assert request["response_format"]["json_schema"]["schema"] == strict_json_schema(Draft)


def test_draft_repair_prompt_carries_previous_draft_and_violations(
    server: LlmServer, llm_config: Config
) -> None:
    server.reply_json({**GOOD_DRAFT, "refund_cents": 0, "promises": []})
    previous = Draft.model_validate({**GOOD_DRAFT, "refund_cents": 5000})
    violation = "refund of 5000 cents exceeds the 599 cents policy refund-2026-01 allows for order A-1001"
    command = draft_command(violations=[violation], previous=previous)

    result = draft_reply.build_handler(llm_config).handle(command, NOW)

    assert isinstance(result, ReplyDrafted) and result.payload.draft.refund_cents == 0
    content = server.requests[0]["messages"][1]["content"]
    assert violation in content
    assert '"refund_cents": 5000' in content


def test_draft_schema_violation_is_a_failed_result(server: LlmServer, llm_config: Config) -> None:
    server.reply_json(
        {"subject": "Re", "body": "Hello", "refund_cents": "lots", "promises": "refund_shipping"}
    )
    result = draft_reply.build_handler(llm_config).handle(draft_command(), NOW)
    assert isinstance(result, StepFailed)
    assert result.payload.step == "draft-reply" and result.payload.retryable is False
    assert any(e.startswith("refund_cents:") for e in result.payload.errors)
    assert any(e.startswith("promises:") for e in result.payload.errors)
    assert result.payload.llm is not None


def test_draft_invalid_json_is_a_failed_result(server: LlmServer, llm_config: Config) -> None:
    server.reply_text("Sure! Here is your reply: Dear Jane ...")
    result = draft_reply.build_handler(llm_config).handle(draft_command(), NOW)
    assert isinstance(result, StepFailed) and result.payload.reason == INVALID_OUTPUT_REASON
    assert result.payload.errors


def test_draft_server_error_is_transient(server: LlmServer, llm_config: Config) -> None:
    server.fail(502)
    with pytest.raises(TransientError):
        draft_reply.build_handler(llm_config).handle(draft_command(), NOW)


# ---------------------------------------------------------------- provider choice and schema


def test_choose_provider_never_offline_when_an_endpoint_is_configured(tmp_path: Any) -> None:
    assert isinstance(choose_provider(Config(llm_base_url="http://127.0.0.1:9/v1")), OpenAICompatibleProvider)
    assert isinstance(
        choose_provider(Config(llm_base_url="https://api.openai.com/v1", openai_api_key="sk-x")),
        OpenAICompatibleProvider,
    )
    assert isinstance(choose_provider(Config(llm_base_url="")), OfflineProvider)
    for module in (classify, draft_reply):
        handler = module.build_handler(Config(llm_base_url="http://127.0.0.1:9/v1"))
        assert handler.provider.name == OPENAI_COMPATIBLE
        assert module.build_handler(Config()).provider.name == OFFLINE


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from _objects(item)


@pytest.mark.parametrize("model", [Classification, Draft])
def test_strict_schema_closes_every_object(model: Any) -> None:
    schema = strict_json_schema(model)
    objects = list(_objects(schema))
    assert objects
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])
    assert '"default"' not in json.dumps(schema)
    assert model.model_json_schema() != schema  # the model's own schema is untouched


# ---------------------------------------------------------------- offline provider (demo)


@pytest.mark.parametrize(
    ("subject", "body", "intent", "risk", "order_id"),
    [
        ("Refund", "Please refund order A-1001, it was wrong.", "refund_request", "medium", "A-1001"),
        (
            "Money",
            "I want my money back for order #4711 or I call my lawyer.",
            "refund_request",
            "high",
            "4711",
        ),
        (
            "Chargeback",
            "Refund now or I file a chargeback. Order number: 88123",
            "refund_request",
            "high",
            "88123",
        ),
        ("Where is my order?", "Where is ORD-20931?", "delivery_status", "low", "ORD-20931"),
        ("Late", "My package hasn't arrived yet.", "delivery_status", "low", None),
        ("Tracking", "The tracking link for order no. 1234 is dead", "delivery_status", "low", "1234"),
        ("Broken", "The mug in B-77001 arrived broken.", "complaint", "medium", "B-77001"),
        ("Unhappy", "I am really angry about your service.", "complaint", "medium", None),
        ("Hello", "Do you sell gift cards?", "other", "low", None),
        ("Hello", "Is this a scam? Do you sell gift cards?", "other", "high", None),
    ],
)
def test_offline_classification_table(
    subject: str, body: str, intent: str, risk: str, order_id: str | None
) -> None:
    found = offline_classification(make_email(subject=subject, body=body))
    assert (found.intent, found.risk, found.order_id) == (intent, risk, order_id)
    assert 0.0 <= found.confidence <= 1.0


def test_offline_classification_prefers_the_upstream_order_id() -> None:
    found = offline_classification(make_email(body="order A-1001 is late, where is it", order_id="Z-9"))
    assert found.order_id == "Z-9"


def test_extract_order_id() -> None:
    assert extract_order_id("see A-1001 and B-2002") == "A-1001"
    assert extract_order_id("Order #5566 please") == "5566"
    assert extract_order_id("12 days ago") is None


def test_offline_draft_quotes_order_and_passes_the_guard() -> None:
    command = draft_command()
    draft = offline_draft(command.payload)
    assert draft.order_id == "A-1001" and "A-1001" in draft.body
    assert "DHL" in draft.body and "March 04, 2026" in draft.body
    assert draft.promises == ["refund_shipping"] and draft.refund_cents == 599
    assert "5.99 USD" in draft.body
    assert check_draft(draft, order=ORDER, policy=REFUND_POLICY, email=command.payload.email) == []


def test_offline_draft_obeys_a_policy_without_refunds() -> None:
    command = draft_command(intent="delivery_status", policy=NO_REFUND_POLICY)
    draft = offline_draft(command.payload)
    assert draft.refund_cents == 0 and draft.promises == []
    assert "refund" not in draft.body.lower()
    assert check_draft(draft, order=ORDER, policy=NO_REFUND_POLICY, email=command.payload.email) == []


def test_offline_draft_no_refund_above_the_limit() -> None:
    expensive = ORDER.model_copy(update={"shipping_cost_cents": 4000})  # above the 2000-cent cap
    draft = offline_draft(draft_command(order=expensive).payload)
    assert draft.refund_cents == 0 and draft.promises == []
    assert check_draft(draft, order=expensive, policy=REFUND_POLICY) == []


def test_offline_draft_repair_is_conservative_and_passes() -> None:
    previous = Draft.model_validate({**GOOD_DRAFT, "refund_cents": 5000})
    command = draft_command(violations=["refund of 5000 cents exceeds the 599 cents"], previous=previous)
    draft = offline_draft(command.payload)
    assert draft.refund_cents == 0 and draft.promises == [] and "A-1001" in draft.body
    assert check_draft(draft, order=ORDER, policy=REFUND_POLICY, email=command.payload.email) == []


def test_offline_handlers_say_provider_offline(tmp_path: Any) -> None:
    config = Config(state_dir=tmp_path)  # no endpoint
    classified = classify.build_handler(config).handle(classify_command(), NOW)
    assert isinstance(classified, EmailClassified)
    assert classified.payload.intent == "delivery_status" and classified.payload.order_id == "A-1001"
    assert classified.payload.llm.provider == OFFLINE
    assert Classification.model_validate_json(classified.payload.llm.raw_output).intent == "delivery_status"

    drafted = draft_reply.build_handler(config).handle(draft_command(), NOW)
    assert isinstance(drafted, ReplyDrafted)
    assert drafted.payload.llm.provider == OFFLINE and "A-1001" in drafted.payload.draft.body
    assert json.loads(drafted.payload.llm.prompt)[0]["role"] == "system"


def test_offline_artificial_latency(tmp_path: Any) -> None:
    handler = classify.build_handler(Config(state_dir=tmp_path), llm_latency_ms=150)
    started = time.monotonic()
    result = handler.handle(classify_command(), NOW)
    elapsed = time.monotonic() - started
    assert isinstance(result, EmailClassified)
    assert 0.14 <= elapsed < 1.0
    assert result.payload.llm.latency_ms >= 140


def test_handler_is_safe_across_worker_threads(server: LlmServer, llm_config: Config) -> None:
    # The base shares one handler between its workers: concurrent calls must each get their own answer.
    server.responder = lambda body: Scripted(content=json.dumps(GOOD_CLASSIFICATION))
    handler = classify.build_handler(llm_config)
    results: list[Any] = []
    lock = threading.Lock()

    def work(attempt: int) -> None:
        result = handler.handle(classify_command(attempt=attempt), NOW)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.payload.attempt for r in results) == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(r, EmailClassified) for r in results)


# ---------------------------------------------------------------- end to end through Kafka and the base


def test_classify_end_to_end_through_kafka(topics: Config) -> None:
    """ClassifyEmail on cmd.classify -> the base -> the real client -> the test server -> step.results."""
    from consumer_kit import Reader, produce, running

    from consumers import load_handler
    from pm.steps.consumer import RetryPolicy, StepConsumer

    flaky_calls: list[int] = []

    def respond(body: dict[str, Any]) -> Scripted:
        content = body["messages"][1]["content"]
        if "Subject: garbled" in content:
            return Scripted(content="I think this is a refund request")
        if "Subject: flaky" in content and not flaky_calls:
            flaky_calls.append(1)
            return Scripted(status=429)
        return Scripted(content=json.dumps(GOOD_CLASSIFICATION), prompt_tokens=50, completion_tokens=9)

    commands = {
        subject: ClassifyEmail(
            event_id=f"evt-{subject}",
            correlation_id=f"corr-{subject}",
            occurred_at=NOW,
            payload=ClassifyEmailPayload(
                command_id=command_id(f"corr-{subject}", "classify", 1),
                attempt=1,
                email=make_email(subject=subject).model_copy(update={"message_id": f"corr-{subject}"}),
            ),
        )
        for subject in ("good", "garbled", "flaky")
    }
    reader = Reader(topics)
    with LlmServer(responder=respond) as server:
        config = topics.with_overrides(llm_base_url=server.base_url, llm_model="e2e-model")
        handler = load_handler("classify", config, rpm=6000)
        retry = RetryPolicy(tries=3, base_delay=0.01, max_delay=0.02)
        with running(StepConsumer(config, handler, concurrency=2, retry=retry)):
            produce(config, *commands.values())
            results = {r.causation_id: r for r in reader.take(3)}
        assert len(server.requests) == 4  # one each, plus the retried 429
    reader.close()

    good, garbled, flaky = (results[commands[s].event_id] for s in ("good", "garbled", "flaky"))
    for ok in (good, flaky):
        assert isinstance(ok, EmailClassified)
        assert ok.payload.intent == "delivery_status" and ok.payload.order_id == "A-1001"
        assert ok.payload.llm.provider == OPENAI_COMPATIBLE and ok.payload.llm.model == "e2e-model"
        assert (ok.payload.llm.prompt_tokens, ok.payload.llm.completion_tokens) == (50, 9)
    assert good.correlation_id == "corr-good"
    assert isinstance(garbled, StepFailed) and not garbled.payload.retryable
    assert garbled.payload.reason == INVALID_OUTPUT_REASON and garbled.payload.errors
    assert (
        garbled.payload.llm is not None
        and garbled.payload.llm.raw_output == "I think this is a refund request"
    )


# ---------------------------------------------------------------- excerpts, conversations, open orders

HISTORY = [
    ConversationMessage(
        role="customer", message_id="<m0@x>", sender="jane@example.com", subject="Where is my parcel?",
        received_at=NOW, excerpt="Hi, order A-1001 hasn't arrived yet.", episode=1,
    ),
    ConversationMessage(
        role="support", message_id="<r0@pm.local>", sender="support@shop.example", subject="Re: Where is my parcel?",
        received_at=NOW, excerpt="Order A-1001 was shipped with DHL.", truncated=True, episode=1,
    ),
]  # fmt: skip


def test_prompts_say_the_body_is_cut_and_carry_the_conversation() -> None:
    cut = make_email(body="x" * 100)
    payload = ClassifyEmailPayload(
        command_id="c", attempt=1, email=cut, body_truncated=True, body_bytes=700_000, history=HISTORY
    )
    user = classify.classify_messages(payload)[1]["content"]
    assert "only its first 100 of 700000 bytes are shown" in user
    assert user.index("Earlier in this conversation") < user.index("Hi, order A-1001") < user.index("The latest e-mail")
    assert "Our reply" in user and "[...]" in user
    assert classify.classify_messages(make_email())[1]["content"] == classify.classify_messages(
        ClassifyEmailPayload(command_id="c", attempt=1, email=make_email())
    )[1]["content"]  # without history or a cut, the prompt is what it always was
    draft = draft_command().payload.model_copy(update={"body_truncated": True, "body_bytes": 9_000, "history": HISTORY})
    facts = json.loads(draft_reply.draft_messages(draft)[1]["content"].split("Facts:\n", 1)[1])
    assert facts["email"]["body_cut"].endswith("of 9000 bytes")
    assert [m["from"] for m in facts["conversation"]] == ["customer", "support (our reply)"]


def test_offline_question_lists_the_open_orders_and_passes_its_guard() -> None:
    payload = draft_command(intent="delivery_status", order=None, policy=NO_REFUND_POLICY).payload.model_copy(
        update={"candidate_orders": ["A-2001", "A-2002"]}
    )
    facts = json.loads(draft_reply.draft_messages(payload)[1]["content"].split("Facts:\n", 1)[1])
    assert facts["order"] is None and facts["orders_to_ask_about"] == ["A-2001", "A-2002"]
    draft = offline_draft(payload)
    assert draft.order_id is None and draft.refund_cents == 0 and draft.promises == []
    assert review_question(draft, candidates=["A-2001", "A-2002"], email=payload.email).violations == []
