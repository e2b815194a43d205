"""Backpressure: above `max_active` running processes, stop fetching the topics that open new ones."""

from __future__ import annotations

from collections.abc import Collection
from typing import TextIO

from confluent_kafka import Consumer, TopicPartition


class Backpressure:
    """Pauses the assigned partitions of `topics` (physical names) above `max_active`, resumes below.

    Only processes with status running count (waiting for a human does not): `active` holds the
    count of each open partition store, as of its last write.
    """

    def __init__(self, topics: frozenset[str], max_active: int, log: TextIO) -> None:
        self.topics = topics
        self.max_active = max_active
        self.log = log
        self.active: dict[int, int] = {}
        self.assignment: list[TopicPartition] = []
        self.paused: list[TopicPartition] = []

    def count(self) -> int:
        return sum(self.active.values())

    def defers(self, topic: str, active_delta: int) -> bool:
        """Whether a record of `topic` that opens a process waits (with `active_delta` from the batch so far)."""
        return topic in self.topics and self.count() + active_delta >= self.max_active

    def assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assignment = list(partitions)
        # librdkafka keeps an application pause across revoke/assign: a start-topic partition paused
        # before a rebalance would never be fetched again. Start unpaused; `check` re-pauses.
        consumer.resume(partitions)
        self.paused = []

    def revoke(self, partitions: Collection[int]) -> None:
        self.assignment = [tp for tp in self.assignment if tp.partition not in partitions]
        self.paused = [tp for tp in self.paused if tp.partition not in partitions]

    def check(self, consumer: Consumer, force_pause: bool = False) -> None:
        starts = [tp for tp in self.assignment if tp.topic in self.topics]
        if not starts:
            return
        if (force_pause or self.count() >= self.max_active) and not self.paused:
            consumer.pause(starts)
            self.paused = starts
            print(
                f"pm: {self.count()} active processes (max {self.max_active}): pausing new processes",
                file=self.log,
                flush=True,
            )
        elif self.paused and self.count() < self.max_active:
            consumer.resume(self.paused)
            self.paused = []
