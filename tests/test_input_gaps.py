"""A record the broker did not return is read again, never committed past.

The local broker can answer a fetch with a later producer's batch while an earlier one is reserved
but not stored yet (bench/fetch_skip.py reproduces it); the PM then sees an offset gap. Here the gap
is made at the client boundary: the consumer hides one fetched record once, as the broker would.
"""

from __future__ import annotations

from typing import Any

from test_runtime_support import PmThread, email, publish, stages, wait_until

from pm.config import Config
from pm.partitioner import partition_for

HIDDEN = b"hidden-once"


class SkippingConsumer:
    """The PM's consumer, hiding the first fetched record whose value carries HIDDEN (once)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hidden: list[tuple[str, int, int]] = []

    def _filter(self, messages: list[Any]) -> list[Any]:
        kept = []
        for message in messages:
            if not self.hidden and message.error() is None and HIDDEN in (message.value() or b""):
                self.hidden.append((message.topic(), message.partition(), message.offset()))
                continue
            kept.append(message)
        return kept

    def consume(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._filter(self.inner.consume(*args, **kwargs))

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            message = self.inner.poll(*args, **kwargs)
            if message is None or self._filter([message]):
                return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _same_partition(n: int, partitions: int = 6) -> list[str]:
    """`n` correlation IDs whose records all land on one partition (murmur2, as every producer places them)."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        cid = f"<gap-{i}@x>"
        if partition_for(cid.encode(), partitions) == 0:
            found.append(cid)
        i += 1
    return found


def test_a_record_the_broker_skipped_is_read_again(topics: Config) -> None:
    config = topics
    before, hidden, after = _same_partition(3)
    with PmThread(config) as pm:
        assert pm.manager is not None
        skipping = SkippingConsumer(pm.manager.consumer)
        pm.manager._consumer = skipping  # type: ignore[assignment]
        publish(config, [email(before)])  # where the partition stands: the next offset is expected
        wait_until(lambda: stages(config).get(before) == "classifying")
        publish(config, [email(hidden, subject=HIDDEN.decode()), email(after)])
        wait_until(lambda: all(stages(config).get(c) == "classifying" for c in (hidden, after)))
    assert len(skipping.hidden) == 1  # hidden once from the PM, and decided all the same
