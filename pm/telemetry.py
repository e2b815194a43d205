"""OpenTelemetry for every `pm` process: providers, Kafka header propagation, safe attributes, metrics.

- `setup_telemetry(service)` once per OS process: exporters come from the standard `OTEL_*`
  environment (OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `pm[otlp]` extra is
  installed; console when `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` is `console`;
  otherwise none), `OTEL_SDK_DISABLED=true` leaves the no-op API in place.
- `inject` / `extract` carry W3C `traceparent` / `tracestate` in Kafka record headers, so a
  step consumer's span is the child of the PM span that produced its command.
- `safe_attributes` keeps bodies, addresses and other personal data out of spans unless `PM_OTEL_REDACT=0`.
- Metric instruments are created lazily from the global meter, so modules can import them freely.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "INSTRUMENTATION_NAME",
    "GEN_AI_SYSTEM",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "PM_CORRELATION_ID",
    "PM_EVENT_ID",
    "PM_EVENT_TYPE",
    "PM_STEP",
    "PM_ATTEMPT",
    "PM_COMMAND_ID",
    "PM_PROCESS",
    "PM_STATUS",
    "PM_OUTCOME",
    "MESSAGING_SYSTEM",
    "MESSAGING_DESTINATION",
    "MESSAGING_PARTITION",
    "MESSAGING_OFFSET",
    "MESSAGING_KEY",
    "setup_telemetry",
    "is_configured",
    "add_span_processor",
    "tracer",
    "span",
    "tracing",
    "meter",
    "inject",
    "extract",
    "Headers",
    "redaction_enabled",
    "safe_attributes",
    "add_sensitive_keys",
    "event_attributes",
    "record_attributes",
    "llm_attributes",
    "events_processed",
    "decision_latency",
    "active_processes",
    "waiting_processes",
    "stuck_processes",
    "quarantined_processes",
    "command_round_trip",
    "dlq_records",
    "consumer_lag",
]

INSTRUMENTATION_NAME = "pm"

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"

# Our own attributes (namespaced), and messaging semantic conventions for Kafka.
PM_CORRELATION_ID = "pm.correlation_id"
PM_EVENT_ID = "pm.event_id"
PM_EVENT_TYPE = "pm.event_type"
PM_STEP = "pm.step"
PM_ATTEMPT = "pm.attempt"
PM_COMMAND_ID = "pm.command_id"
PM_PROCESS = "pm.process"
PM_STATUS = "pm.status"
PM_OUTCOME = "pm.outcome"
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_PARTITION = "messaging.destination.partition.id"
MESSAGING_OFFSET = "messaging.kafka.offset"
MESSAGING_KEY = "messaging.kafka.message.key"

_lock = threading.Lock()
_configured = False
_tracer_provider: Any = None  # the SDK TracerProvider once configured (None when disabled)
# True once spans go somewhere (an exporter or a processor is attached). Until then tracing is a
# true no-op: no tracer lookups, no spans, no header injection or parsing (that cost the PM ~20 %
# of its CPU with nothing exported).
_tracing = False
_tracer: Tracer | None = None  # cached: `get_tracer` on every use was a measurable cost
_propagator = TraceContextTextMapPropagator()
_TRACE_HEADERS = ("traceparent", "tracestate")


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def _exporter_names(variable: str) -> set[str]:
    return {name.strip().lower() for name in os.environ.get(variable, "").split(",") if name.strip()}


def setup_telemetry(
    service_name: str,
    *,
    span_processors: Sequence[Any] = (),
    metric_readers: Sequence[Any] = (),
) -> None:
    """Install the SDK tracer and meter providers once per OS process (later calls only add processors).

    `span_processors` / `metric_readers` are extra SDK processors and readers (tests use in-memory
    ones); metric readers only take effect on the first call, an OTel SDK limitation.
    """
    global _configured, _tracer_provider
    with _lock:
        if _configured:
            for processor in span_processors:
                add_span_processor(processor)
            return
        _configured = True
        if _truthy(os.environ.get("OTEL_SDK_DISABLED"), False):
            return
        # Imported here so `pm` commands that never trace do not pay for the SDK import.
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
        provider = TracerProvider(resource=resource)
        readers: list[Any] = list(metric_readers)
        exported = False  # spans go to an exporter
        traces = _exporter_names("OTEL_TRACES_EXPORTER")
        metric_exporters = _exporter_names("OTEL_METRICS_EXPORTER")
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and "none" not in traces:
            span_exporter, metric_exporter = _otlp_exporters()
            if span_exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(span_exporter))
                exported = True
            if metric_exporter is not None and "none" not in metric_exporters:
                readers.append(PeriodicExportingMetricReader(metric_exporter))
        if "console" in traces:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
            exported = True
        if "console" in metric_exporters:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        for processor in span_processors:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        if readers:  # without a reader the API's no-op meter costs nothing; the SDK one would aggregate
            metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
        _tracer_provider = provider
        _set_tracing(exported or bool(span_processors))


def _otlp_exporters() -> tuple[Any, Any]:
    """OTLP/HTTP exporters when the optional `pm[otlp]` extra is installed, else (None, None)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        print(
            "pm: OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed "
            "(pip install 'pm[otlp]'); telemetry is not exported",
            file=sys.stderr,
        )
        return None, None
    # Endpoint, headers, protocol details: the exporters read the OTEL_EXPORTER_OTLP_* variables.
    return OTLPSpanExporter(), OTLPMetricExporter()


def is_configured() -> bool:
    return _configured


def add_span_processor(processor: Any) -> None:
    """Attach an SDK span processor (e.g. an in-memory exporter in tests) to the configured provider."""
    if _tracer_provider is None:
        raise RuntimeError("telemetry is not set up or is disabled (OTEL_SDK_DISABLED)")
    _tracer_provider.add_span_processor(processor)
    _set_tracing(True)


def _set_tracing(on: bool) -> None:
    global _tracing, _tracer
    _tracing, _tracer = on, None


def tracing() -> bool:
    """True when spans are exported or processed somewhere; callers skip span work otherwise."""
    return _tracing


def tracer() -> Tracer:
    """The `pm` tracer: the SDK one once spans go somewhere, a no-op tracer until then (cached)."""
    global _tracer
    found = _tracer
    if found is None:
        found = trace.get_tracer(INSTRUMENTATION_NAME) if _tracing else trace.NoOpTracer()
        _tracer = found
    return found


class _NoSpan(AbstractContextManager[None]):
    """What `span` gives when nothing is traced: entering it costs nothing and yields None."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(
    name: str, attributes: Callable[[], Mapping[str, AttributeValue]] | None = None, **options: Any
) -> AbstractContextManager[Span] | AbstractContextManager[None]:
    """The current span `name` while tracing (`attributes` built then, passed at its start); else None.

    Without tracing not even a no-op span is entered (~10 us) nor are its attributes built (redaction
    over every string: 10-40 us): the hot paths (each input, command, record, model call) pay nothing.
    `options` go to `start_as_current_span` (`kind`, `context`, ...).
    """
    if not tracing():
        return _NO_SPAN
    return tracer().start_as_current_span(name, attributes=attributes() if attributes is not None else None, **options)


def meter() -> Meter:
    return metrics.get_meter(INSTRUMENTATION_NAME)


# ---------------------------------------------------------------- propagation through Kafka headers

_EMPTY_CONTEXT = otel_context.Context()

# confluent-kafka's header type: what `Producer.produce(headers=...)` accepts and `Message.headers()` gives.
Headers = list[tuple[str, str | bytes | None]]


def inject(headers: Headers | None = None, context: Context | None = None) -> Headers:
    """`headers` (a new list; existing trace headers replaced) plus the W3C trace context of `context`/now.

    Without tracing (`tracing()` False) nothing is added: there is no span whose context to carry.
    """
    if not _tracing:
        return list(headers) if headers else []
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=context)
    # Also run any globally configured propagator (e.g. baggage) the deployer set via OTEL_PROPAGATORS.
    get_global_textmap().inject(carrier, context=context)
    kept: Headers = [(k, v) for k, v in (headers or []) if k not in carrier]
    return kept + [(k, v.encode("ascii")) for k, v in carrier.items()]


def extract(headers: Headers | Mapping[str, str | bytes | None] | None) -> Context:
    """The context carried by a consumed record's headers (confluent-kafka gives a list or None)."""
    if not _tracing:
        return _EMPTY_CONTEXT  # nothing will be a child of it: skip the parsing
    carrier: dict[str, str] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if value is None:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        carrier[key.lower()] = text
    ctx = get_global_textmap().extract(carrier, context=otel_context.Context())
    return _propagator.extract(carrier, context=ctx)


# ---------------------------------------------------------------- attributes and redaction

# Keys whose values are personal data (bodies, addresses, names): dropped when redaction is on.
# Apps add their own (`add_sensitive_keys`), e.g. the fields of their payloads that hold such data.
_SENSITIVE_KEYS = {
    "body",
    "subject",
    "sender",
    "recipient",
    "to",
    "from",
    "address",
    "edited_body",
    "edited_fields",
    "prompt",
    "raw_output",
    "proposal",
    "context",
}


def add_sensitive_keys(*keys: str) -> None:
    """Also drop attributes with these (leaf) keys when redaction is on."""
    _SENSITIVE_KEYS.update(keys)
# Identifier keys are kept verbatim: a Message-ID looks like an address but is the correlation ID.
_ID_SUFFIXES = ("correlation_id", "event_id", "causation_id", "command_id", "message_id", "message.key")
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
AttributeValue = str | bool | int | float


def redaction_enabled() -> bool:
    """`PM_OTEL_REDACT` (default on): keep bodies, addresses and other personal data out of telemetry."""
    return _truthy(os.environ.get("PM_OTEL_REDACT"), True)


def safe_attributes(attributes: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, AttributeValue]:
    """Span-ready attributes: None dropped, enums/others stringified, personal data removed when redacting."""
    redact = redaction_enabled()
    result: dict[str, AttributeValue] = {}
    for key, value in {**(attributes or {}), **more}.items():
        if value is None:
            continue
        leaf = key.rsplit(".", 1)[-1].lower()
        if redact and leaf in _SENSITIVE_KEYS:
            continue
        if isinstance(value, bool | int | float):
            result[key] = value
            continue
        text = value.value if hasattr(value, "value") and isinstance(value.value, str) else str(value)
        if redact and not key.lower().endswith(_ID_SUFFIXES):
            text = _ADDRESS.sub("[redacted]", text)
        result[key] = text
    return result


def event_attributes(event: Any) -> dict[str, AttributeValue]:
    """Envelope attributes of an `Event` (plus step, attempt and command ID for commands and results)."""
    attrs: dict[str, Any] = {
        PM_CORRELATION_ID: event.correlation_id,
        PM_EVENT_ID: event.event_id,
        PM_EVENT_TYPE: event.type,
    }
    payload = getattr(event, "payload", None)
    step = getattr(type(event), "STEP", None) or getattr(payload, "step", None)
    attrs[PM_STEP] = step
    attrs[PM_ATTEMPT] = getattr(payload, "attempt", None)
    attrs[PM_COMMAND_ID] = getattr(payload, "command_id", None)
    llm = getattr(payload, "llm", None)
    if llm is not None:
        attrs.update(llm_attributes(llm))
    return safe_attributes(attrs)


def record_attributes(
    topic: str, partition: int | None = None, offset: int | None = None, key: bytes | str | None = None
) -> dict[str, AttributeValue]:
    """Messaging attributes of a Kafka record (use the logical topic name)."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return safe_attributes(
        {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_DESTINATION: topic,
            MESSAGING_PARTITION: None if partition is None else str(partition),
            MESSAGING_OFFSET: offset,
            MESSAGING_KEY: key,
        }
    )


def llm_attributes(llm: Any) -> dict[str, AttributeValue]:
    """GenAI attributes of an `LlmCall` (model and token counts; never the prompt or output)."""
    provider = getattr(llm, "provider", "")
    return safe_attributes(
        {
            GEN_AI_SYSTEM: "openai" if provider == "openai-compatible" else provider or None,
            GEN_AI_OPERATION_NAME: "chat",
            GEN_AI_REQUEST_MODEL: getattr(llm, "model", None),
            GEN_AI_USAGE_INPUT_TOKENS: getattr(llm, "prompt_tokens", None),
            GEN_AI_USAGE_OUTPUT_TOKENS: getattr(llm, "completion_tokens", None),
        }
    )


# ---------------------------------------------------------------- metric instruments (lazy)

_instruments: dict[str, Any] = {}


def _instrument(name: str, factory: str, unit: str, description: str) -> Any:
    # Created on first use, after setup_telemetry normally ran; the API's proxy meter copes otherwise.
    found = _instruments.get(name)
    if found is None:
        with _lock:
            found = _instruments.get(name)
            if found is None:
                found = getattr(meter(), factory)(name, unit=unit, description=description)
                _instruments[name] = found
    return found


def events_processed() -> Counter:
    """Input events the PM handled; attributes: pm.event_type, pm.outcome (applied/rejected/failed/duplicate)."""
    return _instrument("pm.events.processed", "create_counter", "{event}", "Input events processed by the PM")


def decision_latency() -> Histogram:
    """Seconds spent in `decide` per event; attributes: pm.process, pm.event_type."""
    return _instrument("pm.decision.duration", "create_histogram", "s", "Time spent deciding one event")


def active_processes() -> UpDownCounter:
    """Processes running (not terminal, not waiting for a human); +1 / -1 on transitions."""
    return _instrument(
        "pm.processes.active", "create_up_down_counter", "{process}", "Active (running) processes"
    )


def waiting_processes() -> UpDownCounter:
    """Processes waiting for a human approval; +1 / -1 on transitions."""
    return _instrument(
        "pm.processes.waiting", "create_up_down_counter", "{process}", "Processes waiting for approval"
    )


def stuck_processes() -> UpDownCounter:
    """Running processes with no live timer (the watchdog, `pm.fold.stuck`); +1 / -1 on transitions."""
    return _instrument(
        "pm.processes.stuck", "create_up_down_counter", "{process}", "Running processes nothing will move on"
    )


def quarantined_processes() -> UpDownCounter:
    """Processes quarantined (an input kept its batch from committing); +1 / -1 on transitions."""
    return _instrument(
        "pm.processes.quarantined", "create_up_down_counter", "{process}", "Quarantined processes"
    )


def command_round_trip() -> Histogram:
    """Seconds from a command's `occurred_at` (issued by the PM) to its result (step consumers record it); attribute: pm.step."""
    return _instrument("pm.command.round_trip", "create_histogram", "s", "Command to result round-trip time")


def dlq_records() -> Counter:
    """Records sent to pm.dlq; attributes: messaging.destination.name (source topic), error type, component."""
    return _instrument(
        "pm.dlq.records", "create_counter", "{record}", "Records sent to the dead-letter queue"
    )


def consumer_lag() -> Any:
    """A synchronous gauge (the API types it privately): records behind per partition, `.set(lag, attrs)`; meaningful on Apache Kafka, not on Tansu."""
    return _instrument("pm.consumer.lag", "create_gauge", "{record}", "Consumer lag per partition")
