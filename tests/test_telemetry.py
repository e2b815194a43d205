"""Telemetry: W3C trace context through Kafka headers, redaction, GenAI attributes, metrics, env config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from customer_email.events import EmailClassified, EmailClassifiedPayload
from pm import telemetry
from pm.config import Config
from pm.events import LlmCall
from pm.kafka import make_consumer, make_producer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    telemetry.setup_telemetry("pm-test", span_processors=[processor])
    try:
        yield exporter
    finally:
        processor.shutdown()


def _by_name(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def test_child_span_from_injected_headers_shares_the_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.tracer().start_as_current_span("parent") as parent:
        headers = telemetry.inject([("x-other", b"1"), ("traceparent", b"stale")])
    values = dict(headers)
    assert values["x-other"] == b"1"
    assert [k for k, _ in headers].count("traceparent") == 1
    ctx = parent.get_span_context()
    # flags: sampled (01), plus the W3C level-2 "random trace id" bit (02) on recent SDKs
    traceparent = values["traceparent"]
    assert isinstance(traceparent, bytes)
    assert traceparent[:-2] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-".encode()

    with telemetry.tracer().start_as_current_span("child", context=telemetry.extract(headers)):
        pass
    child = _by_name(spans, "child")
    assert child.context.trace_id == ctx.trace_id
    assert child.parent is not None and child.parent.span_id == ctx.span_id


def test_no_headers_start_a_new_trace(spans: InMemorySpanExporter) -> None:
    # extract() must not fall back to the current context: a record without headers is a new root
    tracer = telemetry.tracer()
    with (
        tracer.start_as_current_span("outer"),
        tracer.start_as_current_span("root", context=telemetry.extract(None)),
    ):
        pass
    assert _by_name(spans, "root").parent is None
    assert telemetry.inject() == []  # no current span, nothing to inject


def test_trace_context_crosses_the_broker(topics: Config, spans: InMemorySpanExporter) -> None:
    topic = topics.topic("cmd.classify")
    producer = make_producer(topics, "test")
    with telemetry.tracer().start_as_current_span("pm.handle") as parent:
        producer.produce(topic, key=b"c-1", value=b"v", headers=telemetry.inject())
    producer.flush(10)
    consumer = make_consumer(topics, "test", f"g-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    try:
        record = None
        for _ in range(100):
            record = consumer.poll(0.2)
            if record is not None and record.error() is None:
                break
        assert record is not None and record.error() is None
        with telemetry.tracer().start_as_current_span("step", context=telemetry.extract(record.headers())):
            pass
    finally:
        consumer.close()
    step = _by_name(spans, "step")
    assert step.context.trace_id == parent.get_span_context().trace_id
    assert step.parent is not None and step.parent.span_id == parent.get_span_context().span_id


def test_safe_attributes_redact_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PM_OTEL_REDACT", raising=False)
    attrs = telemetry.safe_attributes(
        {"pm.correlation_id": "<abc@mail.example.com>", "email.body": "my card...", "pm.step": "classify"},
        sender="ann@example.com",
        reason="mail to ann@example.com bounced",
        missing=None,
        attempt=2,
    )
    assert attrs == {
        "pm.correlation_id": "<abc@mail.example.com>",
        "pm.step": "classify",
        "reason": "mail to [redacted] bounced",
        "attempt": 2,
    }
    monkeypatch.setenv("PM_OTEL_REDACT", "0")
    attrs = telemetry.safe_attributes(sender="ann@example.com", body="hello")
    assert attrs == {"sender": "ann@example.com", "body": "hello"}


def test_llm_results_carry_gen_ai_attributes_without_prompt() -> None:
    event = EmailClassified(
        event_id="e-1",
        correlation_id="c-1",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload=EmailClassifiedPayload(
            command_id="cmd-1",
            attempt=1,
            intent="refund_request",
            risk="low",
            confidence=0.9,
            llm=LlmCall(
                provider="openai-compatible",
                model="gpt-x",
                prompt='[{"role":"user","content":"secret body"}]',
                raw_output="{}",
                prompt_tokens=120,
                completion_tokens=30,
            ),
        ),
    )
    attrs = telemetry.event_attributes(event)
    assert attrs[telemetry.GEN_AI_REQUEST_MODEL] == "gpt-x"
    assert attrs[telemetry.GEN_AI_SYSTEM] == "openai"
    assert attrs[telemetry.GEN_AI_USAGE_INPUT_TOKENS] == 120
    assert attrs[telemetry.GEN_AI_USAGE_OUTPUT_TOKENS] == 30
    assert attrs[telemetry.PM_ATTEMPT] == 1
    assert attrs[telemetry.PM_EVENT_TYPE] == "EmailClassified"
    assert not any("secret" in str(v) for v in attrs.values())


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Providers are process-global and can be set once: environment variants run in a fresh interpreter.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


_METRICS_SCRIPT = """
import json
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pm import telemetry
reader = InMemoryMetricReader()
telemetry.setup_telemetry("svc", metric_readers=[reader])
telemetry.setup_telemetry("svc")  # idempotent
telemetry.events_processed().add(3, {"pm.outcome": "applied"})
telemetry.events_processed().add(1, {"pm.outcome": "rejected"})
telemetry.decision_latency().record(0.002, {"pm.event_type": "EmailReceived"})
telemetry.active_processes().add(2)
telemetry.active_processes().add(-1)
telemetry.waiting_processes().add(1)
telemetry.command_round_trip().record(0.5, {"pm.step": "classify"})
telemetry.dlq_records().add(1)
telemetry.consumer_lag().set(7, {"messaging.destination.partition.id": "0"})
out = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            out[m.name] = [[dict(p.attributes), getattr(p, "value", None), getattr(p, "count", None)]
                           for p in m.data.data_points]
print(json.dumps(out))
"""


def test_metric_instruments_record() -> None:
    result = _run(_METRICS_SCRIPT)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    applied = {p[0]["pm.outcome"]: p[1] for p in data["pm.events.processed"]}
    assert applied == {"applied": 3, "rejected": 1}
    assert data["pm.decision.duration"][0][2] == 1
    assert data["pm.processes.active"][0][1] == 1
    assert data["pm.processes.waiting"][0][1] == 1
    assert data["pm.command.round_trip"][0][0] == {"pm.step": "classify"}
    assert data["pm.dlq.records"][0][1] == 1
    assert data["pm.consumer.lag"][0][1] == 7


_SPAN_SCRIPT = """
from opentelemetry import trace
from pm import telemetry
telemetry.setup_telemetry("svc-from-code")
with telemetry.tracer().start_as_current_span("hello"):
    pass
trace.get_tracer_provider().force_flush() if hasattr(trace.get_tracer_provider(), "force_flush") else None
print(type(trace.get_tracer_provider()).__name__)
"""


def test_console_exporter_from_environment() -> None:
    result = _run(_SPAN_SCRIPT, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="svc-from-env")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TracerProvider"
    assert '"name": "hello"' in result.stderr
    assert "svc-from-env" in result.stderr


def test_no_exporter_by_default_and_sdk_disabled() -> None:
    quiet = _run(_SPAN_SCRIPT)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "TracerProvider" and '"name": "hello"' not in quiet.stderr
    disabled = _run(_SPAN_SCRIPT, OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="console")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.strip() != "TracerProvider" and '"name": "hello"' not in disabled.stderr


def test_otlp_endpoint_without_the_extra_is_reported_not_fatal() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        result = _run(_SPAN_SCRIPT, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
        assert result.returncode == 0, result.stderr
        assert "pm[otlp]" in result.stderr
    else:
        pytest.skip("the otlp extra is installed")


def _descends(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if ancestor.context is not None and current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


def test_one_trace_across_the_pm_and_a_step_consumer(topics: Config, spans: InMemorySpanExporter) -> None:
    """E-mail -> PM span -> ClassifyEmail (traceparent) -> step span -> EmailClassified -> PM span: one trace."""
    from consumer_kit import running
    from test_runtime_support import PmThread, wait_until

    from consumers import load_handler
    from customer_email import CUSTOMER_EMAIL
    from customer_email.publisher import email_event
    from pm.client import produce_event
    from pm.steps.consumer import StepConsumer

    cid = "<trace-1@mail.example>"
    event = email_event(
        {
            "message_id": cid,
            "sender": "ann@example.com",
            "recipient": "support@shop.example",
            "subject": "where is my parcel",
            "body": "Hello, where is my order ORD-1001?",
            "received_at": datetime.now(UTC),  # timers due in minutes: none fires during the test
            "order_id": "ORD-1001",
        }
    )
    step = StepConsumer(topics, load_handler("classify", topics))
    with PmThread(topics, definitions=[CUSTOMER_EMAIL]), running(step):
        producer = make_producer(topics, "upstream")
        with telemetry.tracer().start_as_current_span("upstream") as upstream:
            produce_event(producer, topics, event)
        producer.flush(10)
        wait_until(lambda: any(s.name == "pm.handle EmailClassified" for s in spans.get_finished_spans()))
    finished = list(spans.get_finished_spans())
    trace_id = upstream.get_span_context().trace_id
    pm_received = _by_name(spans, "pm.handle EmailReceived")
    step_span = _by_name(spans, "step classify")
    pm_classified = _by_name(spans, "pm.handle EmailClassified")
    for span in (pm_received, step_span, pm_classified):
        assert span.context is not None and span.context.trace_id == trace_id, span.name
    assert _descends(step_span, pm_received, finished)  # the step's span is the PM span's child
    assert _descends(pm_classified, step_span, finished)  # and the result's handling links back
    attributes = dict(step_span.attributes or {})
    assert attributes.get(telemetry.PM_CORRELATION_ID) == cid
    assert attributes.get(telemetry.PM_STEP) == "classify" and attributes.get(telemetry.PM_ATTEMPT) == 1
    # Redaction: no address or body anywhere in any span of this trace.
    for span in finished:
        if span.context is not None and span.context.trace_id == trace_id:
            text = json.dumps(dict(span.attributes or {}), default=str)
            assert "ann@example.com" not in text and "where is my order" not in text, span.name


_NOOP_SCRIPT = """
from opentelemetry import trace
from pm import telemetry
telemetry.setup_telemetry("svc-quiet")
assert not telemetry.tracing()
assert isinstance(telemetry.tracer(), trace.NoOpTracer) and telemetry.tracer() is telemetry.tracer()
assert telemetry.inject([("a", b"1")]) == [("a", b"1")]
assert telemetry.extract([("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]) == {}
print("quiet")
"""


def test_without_an_exporter_tracing_is_a_true_no_op() -> None:
    """Nothing exported: no spans, no traceparent headers written or parsed (issue 15: ~20 % of the PM)."""
    result = _run(_NOOP_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "quiet"
    console = _run(_NOOP_SCRIPT, OTEL_TRACES_EXPORTER="console")
    assert console.returncode != 0  # with an exporter, tracing is on: the first assert fails


def test_an_llm_call_is_a_client_span_only_while_tracing(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GenAI span of a model call, with its attributes and never the prompt; no span at all untraced."""
    from bench.scenario import Scenario
    from consumers.classify import ClassifyHandler
    from consumers.llm import OfflineProvider
    from consumers.offline import OFFLINE_MODEL

    scenario = Scenario(Config(), "otel")
    command = scenario.first_command(scenario.email(0))
    handler = ClassifyHandler(OfflineProvider())
    handler.handle(command, datetime.now(UTC))
    chat = _by_name(spans, f"chat {OFFLINE_MODEL}")
    attrs = dict(chat.attributes or {})
    assert chat.kind.name == "CLIENT"
    assert attrs[telemetry.GEN_AI_REQUEST_MODEL] == OFFLINE_MODEL
    assert attrs[telemetry.GEN_AI_RESPONSE_MODEL] == OFFLINE_MODEL
    assert not any(command.payload.email.subject in str(v) for v in attrs.values())
    spans.clear()
    monkeypatch.setattr(telemetry, "tracing", lambda: False)  # as without an exporter
    handler.handle(command, datetime.now(UTC))
    assert not spans.get_finished_spans()
