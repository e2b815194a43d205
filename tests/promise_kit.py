"""Helpers for the promise tests (tests/test_promise_*.py, test_send_email_smtp.py, test_e2e_five_consumers.py).

Everything here observes the system from outside: topics read to their partition EOF (never a
watermark: wrong on the local broker), committed group offsets, the stores read-only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, TopicPartition

from pm.config import Config
from pm.kafka import make_consumer
from pm.partitioner import partition_for
from pm.topics import load_layout

__all__ = ["quick_groups", "keys_on_every_partition", "end_offsets", "committed_offsets", "OffsetCheck"]


def quick_groups(config: Config) -> Config:
    """`config` whose consumer groups form in ~1 s instead of 3-6 s on the local broker.

    A shorter session timeout and no static membership (an empty `group.instance.id`): the local
    broker holds a join for about half the session timeout, the whole of it for a static member.
    Only for tests where group membership is not what is tested; producers ignore these settings
    (librdkafka warns once per client).
    """
    return config.with_overrides(
        kafka={
            **config.kafka,
            "session.timeout.ms": "2000",
            "heartbeat.interval.ms": "500",
            "group.instance.id": "",
        }
    )


def keys_on_every_partition(prefix: str, partitions: int = 6) -> list[str]:
    """One correlation ID per partition (index = partition), as `<prefix-N@x>` with the first N that lands there."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        key = f"<{prefix}-{n}@x>"
        found.setdefault(partition_for(key.encode(), partitions), key)
        n += 1
    return [found[p] for p in range(partitions)]


def end_offsets(
    config: Config, logical_topics: Iterable[str], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """(logical topic, partition) -> one past the last record a read_committed reader sees (0 when empty).

    Read to the partition EOF: the high watermark is wrong on the local broker, and a transaction's
    commit marker takes an offset no reader ever gets (so "end" is the last record's offset + 1,
    which is what a consumer commits after it).
    """
    wanted = [(t, p) for t in logical_topics for p in range(load_layout().spec(t).partitions)]
    consumer = make_consumer(
        config, "test-end", f"end-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
    )
    try:
        consumer.assign([TopicPartition(config.topic(t), p, 0) for t, p in wanted])
        ends = {key: 0 for key in wanted}
        pending = set(wanted)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                key = (config.logical_topic(str(message.topic())), int(message.partition() or 0))
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                    continue
                ends[key] = int(message.offset() or 0) + 1
        assert not pending, f"no partition EOF for {sorted(pending)}"
        return ends
    finally:
        consumer.close()


def committed_offsets(
    config: Config, group_id: str, logical_topics: Iterable[str]
) -> dict[tuple[str, int], int]:
    """(logical topic, partition) -> the group's committed offset (negative: nothing committed)."""
    wanted = [(t, p) for t in logical_topics for p in range(load_layout().spec(t).partitions)]
    # A consumer that never subscribes only asks the coordinator (OffsetFetch); it joins no group.
    consumer = make_consumer(config, "test-committed", group_id)
    try:
        found = consumer.committed([TopicPartition(config.topic(t), p) for t, p in wanted], timeout=10)
        return {(config.logical_topic(tp.topic), tp.partition): tp.offset for tp in found}
    finally:
        consumer.close()


@dataclass(frozen=True)
class OffsetCheck:
    """Committed offsets against the end of each partition: what a restarted consumer would re-read."""

    committed: dict[tuple[str, int], int]
    ends: dict[tuple[str, int], int]

    @classmethod
    def of(cls, config: Config, group_id: str, logical_topics: Iterable[str]) -> OffsetCheck:
        topics = list(logical_topics)
        return cls(committed_offsets(config, group_id, topics), end_offsets(config, topics))

    def behind(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Partitions whose committed offset is not their end: (committed, end). Empty ones need none."""
        return {
            key: (self.committed.get(key, -1), end)
            for key, end in self.ends.items()
            if self.committed.get(key, -1) != end and not (end == 0 and self.committed.get(key, -1) < 0)
        }

    def records(self) -> int:
        """How many records the partitions hold in all (offsets: markers included, so an upper bound)."""
        return sum(self.ends.values())
