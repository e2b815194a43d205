"""`pipe`: the raw ceiling. A plain consume->produce loop in transactions, commit per 1000.

Same broker, same topic layout (step.results -> pm.journal), values of PM-event size.
"""

from __future__ import annotations

import os
import time

from confluent_kafka import KafkaError

from bench.common import Result, bench_broker, report
from pm.config import Config
from pm.kafka import make_consumer, make_producer, make_transactional_producer

__all__ = ["run", "measure_pipe"]

VALUE_SIZE = 700  # bytes: a typical encoded JournalEntry of the e-mail process


def _preload(config: Config, topic: str, count: int) -> None:
    producer = make_producer(config, "bench-load", **{"linger.ms": 20})
    value = os.urandom(VALUE_SIZE)
    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=f"c-{i % 5000}".encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(60)


def measure_pipe(config: Config, count: int) -> float:
    """Messages per second through consume -> transactional produce -> commit every 1000."""
    source, sink = config.topic("step.results"), config.topic("pm.journal")
    _preload(config, source, count)
    consumer = make_consumer(config, "bench-pipe", f"{config.topic_prefix}bench-pipe")
    producer = make_transactional_producer(config, "bench-pipe", f"{config.topic_prefix}bench-pipe")
    consumer.subscribe([source])
    done = 0
    started: float | None = None
    producer.begin_transaction()
    in_txn = 0
    deadline = time.monotonic() + 300
    while done < count and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(error)
                continue
            if started is None:
                started = time.perf_counter()
            while True:
                try:
                    producer.produce(sink, key=msg.key(), value=msg.value())
                    break
                except BufferError:
                    producer.poll(0.05)
            done += 1
            in_txn += 1
            if in_txn >= 1000:
                producer.send_offsets_to_transaction(
                    consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
                )
                producer.commit_transaction()
                producer.begin_transaction()
                in_txn = 0
    producer.send_offsets_to_transaction(
        consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
    )
    producer.commit_transaction()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return done / elapsed if elapsed > 0 else 0.0


def run(quick: bool) -> Result:
    count = 20_000 if quick else 200_000
    with bench_broker() as config:
        rate = measure_pipe(config, count)
    result = Result("pipe", rate, "msg/s", extra={"messages": count, "value_bytes": VALUE_SIZE})
    report(
        [("messages", str(count)), ("value size", f"{VALUE_SIZE} B"), ("pipe", f"{rate:,.0f} msg/s")], result
    )
    return result
