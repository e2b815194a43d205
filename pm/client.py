"""Producing events: `Publisher` for any app's events, and `produce_event`, the one helper every producer shares.

An upstream system publishes an app's events like this:

    with Publisher(load_config()) as publisher:
        delivery = publisher.publish(InvoiceDisputed(...))
        print(delivery.correlation_id, delivery.partition, delivery.offset)

Rules (the same for any other language, see README): the value is the event, Avro
single-object encoded with its schema; the record key is the correlation ID, UTF-8; the
partitioner is Java's murmur2 (`murmur2_random` in librdkafka). The PM dead-letters a record
keyed otherwise or on another partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, Message, Producer
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from pm import telemetry
from pm.codec import encode
from pm.config import Config
from pm.errors import PmError
from pm.events import Event
from pm.kafka import make_producer

__all__ = [
    "Delivery",
    "DeliveryError",
    "RecordTooLarge",
    "Publisher",
    "describe_validation_error",
    "produce_event",
]


class RecordTooLarge(PmError, ValueError):
    """An event whose encoding is over the record limit (`max_record_bytes`, Kafka's 1,000,000 by default)."""


class DeliveryError(PmError):
    """The broker did not acknowledge a record."""


@dataclass(frozen=True)
class Delivery:
    """Where a published event landed."""

    correlation_id: str
    event_id: str
    topic: str  # physical topic name
    partition: int
    offset: int


def describe_validation_error(exc: ValidationError) -> str:
    """`field: reason; field: reason` (pydantic's message without URLs and input echoes)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


DeliveryCallback = Callable[[KafkaError | None, Message], None]


def produce_event(
    producer: Producer,
    config: Config,
    event: Event,
    *,
    headers: telemetry.Headers | None = None,
    key: bytes | str | None = None,
    topic: str | None = None,
    on_delivery: DeliveryCallback | None = None,
) -> None:
    """Produce one event to its topic (`config.topic(event.topic)`), keyed by its correlation ID.

    Trace context goes into the headers (a producer span per record). A full local queue
    is waited out with `poll`, never dropped. `key`/`topic` override the defaults (the DLQ
    keeps the original key; journal-only events have no topic of their own).
    """
    logical = topic or event.topic
    if not logical:
        raise ValueError(f"{event.type} has no topic of its own; pass topic=")
    physical = config.topic(logical)
    record_key = (
        (key if key is not None else event.correlation_id).encode() if not isinstance(key, bytes) else key
    )
    value = encode(event)
    if len(value) > config.max_record_bytes:  # Kafka would refuse it; say so before it is queued
        raise RecordTooLarge(
            f"{event.type} of {len(value)} bytes is over the {config.max_record_bytes} bytes a record may have"
        )
    with telemetry.span(
        f"publish {logical}",
        lambda: {**telemetry.event_attributes(event), **telemetry.record_attributes(logical, key=record_key)},
        kind=SpanKind.PRODUCER,
    ):
        record_headers = telemetry.inject(headers)
        while True:
            try:
                producer.produce(
                    physical, value=value, key=record_key, headers=record_headers, on_delivery=on_delivery
                )
                return
            except BufferError:
                producer.poll(0.05)  # queue full: let deliveries drain, then retry


def _delivered(event: Event, callback: Callable[[Delivery | DeliveryError], None]) -> DeliveryCallback:
    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            callback(DeliveryError(f"{event.correlation_id}: not delivered: {err.str()}"))
        else:
            partition, offset = msg.partition(), msg.offset()
            where = (
                msg.topic() or "",
                -1 if partition is None else partition,
                -1 if offset is None else offset,
            )
            callback(Delivery(event.correlation_id, event.event_id, *where))

    return delivered


class Publisher:
    """Publishes any app's events to their topics, keyed by correlation ID, and waits for acknowledgements.

        with Publisher(config) as publisher:
            delivery = publisher.publish(InvoiceDisputed(...))
    """

    def __init__(self, config: Config, producer: Producer | None = None, *, role: str = "upstream") -> None:
        self.config = config
        self._producer = producer or make_producer(config, role)

    def submit_event(
        self, event: Event, callback: Callable[[Delivery | DeliveryError], None], **options: Any
    ) -> None:
        """Produce without waiting; `callback` gets the Delivery or the error later (on poll/flush).

        `options` go to `produce_event` (headers, key, topic).
        """
        produce_event(self._producer, self.config, event, on_delivery=_delivered(event, callback), **options)
        self._producer.poll(0)

    def publish(self, event: Event, timeout: float = 30.0) -> Delivery:
        """Produce and wait until the broker has it; raises DeliveryError."""
        results: list[Delivery | DeliveryError] = []
        self.submit_event(event, results.append)
        return self._wait_one(results, timeout)

    def _wait_one(self, results: list[Delivery | DeliveryError], timeout: float) -> Delivery:
        self.flush(timeout)
        if not results:
            raise DeliveryError(f"no acknowledgement within {timeout:g} s")
        result = results[0]
        if isinstance(result, DeliveryError):
            raise result
        return result

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still queued (0 when all are acknowledged)."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> None:
        remaining = self.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} event(s) not acknowledged within {timeout:g} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.flush()  # an exception already on its way is not masked by a delivery error
