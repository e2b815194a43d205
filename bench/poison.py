"""`poison`: 1,000 normal e-mails with a 2 MB and a 700 KiB one mixed in, on Apache Kafka's default limits.

The whole pipeline runs as in `e2e` (every component its own OS process, 0 ms LLM latency).
Halfway through, an upstream whose producer allows 4 MB records (as one written in another
language might) publishes the two large e-mails; every `pm` producer keeps librdkafka's
default 1,000,000-byte `message.max.bytes` (and `max_record_bytes`, Apache Kafka's default).

Expected: the 2 MB e-mail is dead-lettered by the PM (`RecordTooLarge`, its value left out of the
dead letter), the 700 KiB one is decided like any other (its commands carry a bounded excerpt,
so no record is over the limit), and every normal e-mail finishes. Reported: the statuses, the
DLQ records by error type, the quarantined processes, the aborted PM transactions.
"""

from __future__ import annotations

import time
from collections import Counter

from confluent_kafka import KafkaError, TopicPartition

from bench.common import Result, bench_broker, report
from bench.e2e import measure_e2e
from bench.scenario import Scenario
from customer_email.publisher import email_event
from pm.codec import decode, encode
from pm.config import Config
from pm.events import DlqRecord
from pm.kafka import make_consumer, make_producer
from pm.topics import load_layout

__all__ = ["run", "LARGE"]

LARGE = {"2 MB": 2_000_000, "700 KiB": 700 * 1024}
FILLER = "My order has not arrived and I keep checking the tracking page every morning. "


def _publish_large(config: Config, scenario: Scenario) -> list[str]:
    """Publish the large e-mails with a producer that allows them; their correlation IDs."""
    producer = make_producer(config, "bench-large-upstream", **{"message.max.bytes": 4_000_000})
    ids = []
    for n, size in enumerate(LARGE.values()):
        base = scenario.email(100_000 + n, "status")
        body = (FILLER * (size // len(FILLER) + 1))[:size]
        event = email_event({**base.payload.model_dump(), "body": body})
        producer.produce(
            config.topic("email.received"), key=event.correlation_id.encode(), value=encode(event)
        )
        ids.append(event.correlation_id)
    if producer.flush(60):
        raise RuntimeError("the large e-mails were not delivered")
    return ids


def _dead_letters(config: Config) -> list[DlqRecord]:
    topic = config.topic("pm.dlq")
    consumer = make_consumer(
        config, "bench-dlq", f"{config.topic_prefix}bench-dlq", **{"enable.partition.eof": True}
    )
    partitions = load_layout().spec("pm.dlq").partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: list[DlqRecord] = []
    done: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(done) < partitions and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        done.add(msg.partition() or 0)
                    continue
                record = decode(msg.value() or b"")
                if isinstance(record, DlqRecord):
                    found.append(record)
    finally:
        consumer.close()
    return found


def run(quick: bool) -> Result:
    processes = 200 if quick else 1_000
    with bench_broker() as base:
        started = time.monotonic()
        result = measure_e2e(base, processes, 0, extra=_publish_large)
        wall = time.monotonic() - started
        config = base.with_overrides(topic_prefix=result.prefix)
        dead = _dead_letters(config)
    by_type = Counter(d.payload.error_type for d in dead)
    large_ids = list(result.extra_statuses)
    rows = [
        ("normal e-mails", f"{processes:,}: statuses {result.statuses} in {result.seconds:.1f}s"),
        *(
            (f"{label} e-mail", result.extra_statuses.get(cid, "not journaled"))
            for label, cid in zip(LARGE, large_ids, strict=False)
        ),
        ("DLQ records by error type", str(dict(by_type)) or "none"),
        ("DLQ reasons", "; ".join(d.payload.reason[:160] for d in dead) or "none"),
        ("wall time (setup included)", f"{wall:.1f}s"),
    ]
    finished = sum(v for k, v in result.statuses.items() if k in ("sent", "escalated", "rejected", "failed"))
    outcome = Result(
        "poison",
        finished / processes,
        "share of normal e-mails finished",
        extra={"statuses": result.statuses, "large": result.extra_statuses, "dlq": dict(by_type)},
    )
    report(rows, outcome)
    return outcome
