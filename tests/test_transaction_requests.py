"""A transaction's records reach the broker in one produce request per partition, sent by its commit.

The broker's cost follows requests: with librdkafka's usual short linger, a PM batch deciding for a
while sent a request per partition every few milliseconds (~43 per transaction in bench e2e).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from test_runtime_support import read_topic

from pm.config import Config
from pm.kafka import make_transactional_producer
from pm.topics import load_layout

RECORDS_PER_PARTITION = 4
DECIDING = 0.012  # seconds between records: longer than librdkafka's default linger of 5 ms


def _produce_requests(stats: dict[str, Any]) -> int:
    return sum(int(broker["req"].get("Produce", 0)) for broker in stats["brokers"].values())


def test_a_transaction_sends_each_partition_once_at_its_commit(topics: Config) -> None:
    topic = topics.topic("pm.journal")
    partitions = load_layout().spec("pm.journal").partitions
    reports: list[dict[str, Any]] = []
    producer = make_transactional_producer(
        topics,
        "probe",
        f"{topics.topic_prefix}probe-{uuid.uuid4().hex[:6]}",
        **{"statistics.interval.ms": 100, "stats_cb": lambda raw: reports.append(json.loads(raw))},
    )
    while not reports:  # a first report: requests before the transaction (none are produce requests)
        producer.poll(0.1)
    before = _produce_requests(reports[-1])

    producer.begin_transaction()
    sent = []
    for n in range(RECORDS_PER_PARTITION):
        for partition in range(partitions):
            value = f"{n}/{partition}".encode()
            producer.produce(topic, value=value, partition=partition)
            sent.append(value)
            time.sleep(DECIDING)  # the PM deciding the next input
    producer.commit_transaction(30)
    committed_at = len(reports)
    while len(reports) <= committed_at:  # a report taken after the commit
        producer.poll(0.1)

    requests = _produce_requests(reports[-1]) - before
    assert requests <= partitions, f"{requests} produce requests for one transaction over {partitions} partitions"
    assert sorted(m.value() for m in read_topic(topics, "pm.journal")) == sorted(sent)
