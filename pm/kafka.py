"""Every Kafka client `pm` makes is built here, from one `Config`.

Settings that matter for correctness on both Apache Kafka and the local Tansu
broker (shared/notes/tansu.md) live in this file and nowhere else:
- `partitioner=murmur2_random` on every producer (Java-compatible, so any
  upstream producer and the PM agree on partitions);
- `allow.auto.create.topics=false` (topics come from topics.yaml only);
- idempotent producers with `acks=all`;
- `session.timeout.ms=6000` (Kafka's minimum) and a short fetch wait, because
  the local broker answers a waiting fetch only when it expires;
- a long linger on transactional producers (`TRANSACTION_LINGER_MS`).
User settings from the config file / `PM_KAFKA_*` are applied last and win.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pm.config import Config

__all__ = [
    "make_producer",
    "make_transactional_producer",
    "make_consumer",
    "make_admin",
    "producer_settings",
    "consumer_settings",
    "wait_for_broker",
]


# Every transaction ends in flush/commit, which send what is queued at once, whatever the linger: a
# linger longer than a batch's decisions costs no latency and sends each partition's records of the
# transaction in one request, not one per 5 ms of deciding. With 5 ms the PM sent ~43 produce requests
# per transaction in bench e2e; this cut the broker's CPU per process by a third (RESULTS.md).
TRANSACTION_LINGER_MS = 1000


def _common(config: Config, role: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.resolved_bootstrap,
        "client.id": f"pm-{role}",
        "allow.auto.create.topics": False,
        # Brokers close idle connections; librdkafka reconnects on its own, so don't log it as an error.
        "log.connection.close": False,
    }


def producer_settings(config: Config, role: str, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        **_common(config, role),
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    settings.pop("allow.auto.create.topics")  # consumer-only property in librdkafka
    settings.update(extra)
    settings.update(config.kafka)
    return settings


def consumer_settings(config: Config, role: str, group_id: str, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        **_common(config, role),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.wait.max.ms": config.fetch_wait_ms,
        "partition.assignment.strategy": "range",
    }
    settings.update(extra)
    settings.update(config.kafka)
    return settings


def make_producer(config: Config, role: str, **extra: Any) -> Producer:
    return Producer(producer_settings(config, role, **extra))


def make_transactional_producer(config: Config, role: str, transactional_id: str, **extra: Any) -> Producer:
    """A producer whose `transactional.id` is stable per instance, so a restart fences its own leftovers.

    Its records wait for the transaction's end (`TRANSACTION_LINGER_MS`), where flush and commit send them.
    """
    settings = {"transactional.id": transactional_id, "linger.ms": TRANSACTION_LINGER_MS, **extra}
    producer = Producer(producer_settings(config, role, **settings))
    producer.init_transactions(30)
    return producer


def make_consumer(config: Config, role: str, group_id: str, **extra: Any) -> Consumer:
    return Consumer(consumer_settings(config, role, group_id, **extra))


def make_admin(config: Config, role: str = "admin", **extra: Any) -> AdminClient:
    settings: dict[str, Any] = {
        "bootstrap.servers": config.resolved_bootstrap,
        "client.id": f"pm-{role}",
        **extra,
    }
    settings.update({k: v for k, v in config.kafka.items() if not k.startswith(("producer.", "consumer."))})
    return AdminClient(settings)


def wait_for_broker(config: Config, timeout: float = 10.0) -> None:
    """Block until the broker answers a metadata request, or raise KafkaException."""
    admin = make_admin(config, "probe", log_level=0)  # refused connects while starting are expected
    admin.list_topics(timeout=timeout)
    del admin
