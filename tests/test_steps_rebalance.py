"""Step consumers never lose or strand a command: pause/resume, rebalances, failed deliveries (real broker).

The invariant: every command produced to `cmd.<step>` is handled with its result produced (or
dead-lettered), and no committed offset passes a command whose result is not delivered.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from consumer_kit import Reader, fetch_order, produce, running

from customer_email.events import OrderFetched, OrderFetchedPayload, Step
from pm.codec import decode, encode
from pm.config import Config
from pm.events import Event
from pm.kafka import make_consumer, producer_settings
from pm.partitioner import partition_for
from pm.steps.consumer import StepConsumer
from pm.steps.handler import result_event

PARTITIONS = 6


class Handler:
    """fetch-order, answering at once, except that commands whose order ID is held wait at a gate.

    `let_through(n)` lets n waiting (or future) held commands pass, `open()` all of them.
    """

    step: str = Step.FETCH_ORDER

    def __init__(self, *held: str, delay: Callable[[], float] = lambda: 0.0) -> None:
        self.held = set(held)
        self.delay = delay
        self.gate = threading.Semaphore(0)
        self.opened = threading.Event()
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def let_through(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    def open(self) -> None:
        self.opened.set()
        self.let_through(len(self.held) * 4)

    def handle(self, command: Event, now: datetime) -> Event:
        payload = command.payload
        with self.lock:
            self.calls[payload.command_id] = self.calls.get(payload.command_id, 0) + 1
            delay = self.delay()
        if payload.order_id in self.held and not self.opened.is_set():
            self.gate.acquire(timeout=30)
        if delay:
            time.sleep(delay)
        return result_event(
            command,
            OrderFetched,
            OrderFetchedPayload(
                command_id=payload.command_id, attempt=1, order_id=payload.order_id, found=False
            ),
            now,
        )


class Member(StepConsumer):
    """A step consumer that records the partitions it owns from its rebalance callbacks.

    (Asking librdkafka for the assignment from the test thread holds the GIL while librdkafka's own
    thread answers, which slows the group down by seconds.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owned: set[int] = set()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        self.owned |= {p.partition for p in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_revoke(consumer, partitions)
        self.owned -= {p.partition for p in partitions}

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_lost(consumer, partitions)
        self.owned -= {p.partition for p in partitions}


class Answers:
    """step.results as read so far: which commands (event IDs) have a result."""

    def __init__(self, config: Config) -> None:
        self.reader = Reader(config)
        self.seen: set[str] = set()

    def wait(self, commands: Sequence[Event], timeout: float) -> set[str]:
        """The commands of `commands` answered within `timeout` (event IDs)."""
        wanted = {c.event_id for c in commands}
        deadline = time.monotonic() + timeout
        while not wanted <= self.seen and time.monotonic() < deadline:
            for msg in self.reader.consumer.consume(500, 0.1):
                if msg.error() is None:
                    self.seen.add(str(decode(msg.value() or b"").causation_id))
        return self.seen & wanted


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _partition(command: Event) -> int:
    return partition_for(command.correlation_id.encode(), PARTITIONS)


def _on_partition(partition: int, prefix: str) -> Event:
    """A fetch-order command (order ID `<prefix>-<partition>`) keyed to `partition` of cmd.fetch-order."""
    while True:
        corr = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if partition_for(corr.encode(), PARTITIONS) == partition:
            return fetch_order(f"{prefix}-{partition}", correlation_id=corr)


def _committed(config: Config, consumer: StepConsumer) -> dict[int, int]:
    probe = make_consumer(config, "probe", consumer.group_id)
    try:
        partitions = [TopicPartition(consumer.topic, p) for p in range(PARTITIONS)]
        return {tp.partition: tp.offset for tp in probe.committed(partitions, timeout=10)}
    finally:
        probe.close()


def _offsets(config: Config, commands: Sequence[Event]) -> dict[str, tuple[int, int]]:
    """Command event ID -> (partition, offset) in cmd.fetch-order, read back from the topic."""
    wanted = {c.event_id for c in commands}
    found: dict[str, tuple[int, int]] = {}
    probe = make_consumer(config, "probe-read", f"probe-{uuid.uuid4().hex[:6]}")
    try:
        probe.assign([TopicPartition(config.topic("cmd.fetch-order"), p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 10
        while not wanted <= found.keys() and time.monotonic() < deadline:
            for msg in probe.consume(500, 0.1):
                if msg.error() is None:
                    found[decode(msg.value() or b"").event_id] = (
                        int(msg.partition() or 0),
                        int(msg.offset() or 0),
                    )
    finally:
        probe.close()
    assert wanted <= found.keys(), "commands not found in cmd.fetch-order"
    return {k: v for k, v in found.items() if k in wanted}


def test_rebalance_while_paused_leaves_no_partition_paused(topics: Config, tmp_path: Path) -> None:
    # Incremental (cooperative-sticky) rebalances hand over only the partitions that move. A consumer
    # that is paused (buffer full) when partitions come back must keep the partitions it kept under
    # its flow control: it used to forget the pause, they stayed paused for good, and every later
    # command on them waited for the PM's step timeout, the retry too (same key, same partition).
    coop = topics.with_overrides(
        kafka={**topics.kafka, "partition.assignment.strategy": "cooperative-sticky"}
    )
    held = [f"held-{i}" for i in range(5)]
    handler = Handler(*held)
    # Pauses at 1 running + 4 waiting, resumes at 3 or fewer in flight.
    a = Member(
        coop.with_overrides(state_dir=tmp_path / "a"), handler, concurrency=1, max_buffered=4, stop_grace=0.5
    )
    b = Member(coop.with_overrides(state_dir=tmp_path / "b"), Handler(), concurrency=2, stop_grace=0.5)
    answers = Answers(topics)
    with running(a):
        _wait(lambda: len(a.owned) == PARTITIONS, 15, "the first consumer's assignment")
        produce(topics, *(fetch_order(order_id) for order_id in held))
        _wait(lambda: a._paused and len(a._inflight) == 5, 10, "the first consumer to pause")
        with running(b):
            _wait(lambda: len(b.owned) > 0 and len(a.owned) < PARTITIONS, 20, "the second member")
            handler.let_through(1)
            _wait(lambda: len(a._inflight) == 4, 10, "one held command to finish")
        # B left: its partitions come back to A, still paused (4 in flight, above the resume mark).
        _wait(lambda: len(a.owned) == PARTITIONS, 15, "the partitions to come back")
        handler.open()
        _wait(lambda: not a._inflight, 10, "the held commands to finish")
        later = [_on_partition(p, "later") for p in range(PARTITIONS)]
        produce(topics, *later)
        answered = answers.wait(later, timeout=8)
    missing = sorted(_partition(c) for c in later if c.event_id not in answered)
    assert not missing, f"commands on partitions {missing} were never fetched (left paused)"


def test_revoke_commits_only_delivered_work(topics: Config, tmp_path: Path) -> None:
    # A command still running when its partition is revoked: the revoke commits up to it, never past
    # it, so the partition's next owner runs it (each instance's ledger answers its own duplicates).
    blockers = [_on_partition(p, "block") for p in range(PARTITIONS)]
    followers = [_on_partition(p, "after") for p in range(PARTITIONS)]
    held = Handler(*(c.payload.order_id for c in blockers))
    a = Member(topics.with_overrides(state_dir=tmp_path / "a"), held, concurrency=8, stop_grace=0.5)
    b = Member(topics.with_overrides(state_dir=tmp_path / "b"), Handler(), concurrency=2, stop_grace=0.5)
    answers = Answers(topics)
    with running(a):
        _wait(lambda: len(a.owned) == PARTITIONS, 15, "the first consumer's assignment")
        produce(topics, *blockers, *followers)
        # Everything behind the held commands is done; the held ones pin each partition's commit.
        assert answers.wait(followers, timeout=10) == {c.event_id for c in followers}
        offsets = _offsets(topics, blockers)
        with running(b):
            _wait(lambda: len(b.owned) > 0 and len(a.owned) < PARTITIONS, 15, "the second member")
            moved = set(b.owned)
            # B fetched the held commands of its partitions again (never committed) and answered them.
            answered = answers.wait([c for c in blockers if _partition(c) in moved], timeout=10)
            assert {_partition(c) for c in blockers if c.event_id in answered} == moved
            committed = _committed(topics, a)
            for command in blockers:
                partition, offset = offsets[command.event_id]
                if partition not in moved:  # still held on A: not committed past it
                    assert committed[partition] <= offset, (partition, committed[partition], offset)
            held.open()
            assert answers.wait(blockers, timeout=10) == {c.event_id for c in blockers}


class FlakyDelivery(StepConsumer):
    """Reports the first `failures[order_id]` deliveries of a result as failed, as a broker refusing it."""

    def __init__(self, *args: Any, failures: dict[str, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = dict(failures)
        self.reported_on_owner: list[bool] = []  # per injected failure: reported on the polling thread

    def _produce(self, topic: str, key: bytes, value: bytes, headers: Any, callback: Any, **how: Any) -> None:
        if topic == self.results_topic:
            order_id = decode(value).payload.order_id
            if self.failures.get(order_id, 0) > 0:
                self.failures[order_id] -= 1

                def refused(_err: KafkaError | None, msg: Any) -> None:
                    self.reported_on_owner.append(threading.current_thread() is self._owner)
                    callback(KafkaError(KafkaError._MSG_TIMED_OUT, "injected delivery failure"), msg)

                # Really produced, to the DLQ (nobody reads it here), so that the report comes back the way
                # a real one does: from the main thread's poll, whichever thread produced.
                super()._produce(self.dlq_topic, key, value, headers, refused, **how)
                return
        super()._produce(topic, key, value, headers, callback, **how)


def test_failed_delivery_is_retried_and_never_committed(topics: Config) -> None:
    # A result whose delivery fails is produced again; one that keeps failing stops the consumer
    # with its command uncommitted, so the restarted consumer answers it (from the ledger, no rerun).
    handler = Handler()
    flaky, doomed = fetch_order("flaky"), fetch_order("doomed")
    behind = fetch_order("behind", correlation_id=doomed.correlation_id, attempt=2)  # same partition
    answers = Answers(topics)
    first = FlakyDelivery(topics, handler, failures={"flaky": 3, "doomed": 6})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            first.run(threading.Event())
        except BaseException as exc:  # the give-up we expect
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # One after the other: produced together, the doomed result could use up its tries (and stop
    # the consumer) before the flaky one had its fourth.
    produce(topics, flaky)
    assert answers.wait([flaky], timeout=20) == {flaky.event_id}
    produce(topics, doomed)
    thread.join(30)
    assert not thread.is_alive() and errors, "the consumer did not give up on the undeliverable result"
    assert first.reported_on_owner and all(first.reported_on_owner), first.reported_on_owner
    # No worker outlives the consumer that gave up (none would start a queued command with its ledger closed).
    _wait(lambda: not any(w.is_alive() for w in first._workers), 5, "the failed consumer's workers to end")
    assert answers.wait([doomed], timeout=1) == set()
    (where,) = _offsets(topics, [doomed]).values()
    assert _committed(topics, first)[where[0]] <= where[1]  # not past the undelivered result
    with running(StepConsumer(topics, handler)):  # restarted, same state directory (ledger)
        produce(topics, behind)
        assert answers.wait([doomed, behind], timeout=15) == {doomed.event_id, behind.event_id}
    assert handler.calls[doomed.payload.command_id] == 1


def test_pause_resume_churn_with_aborted_transactions_loses_nothing(topics: Config) -> None:
    # The PM's shape of input: commands in transactions of every size (some aborted and sent again,
    # which a read_committed reader of the local broker still sees), a consumer that pauses and
    # resumes hundreds of times. Every command is answered and every partition committed to its end.
    rng = random.Random(7)
    delays = random.Random(8)
    handler = Handler(delay=lambda: delays.random() * 0.001)
    consumer = StepConsumer(topics, handler, concurrency=2, max_buffered=2)
    answers = Answers(topics)
    commands = [fetch_order(f"churn-{i}") for i in range(600)]
    producer = Producer(producer_settings(topics, "pm-like", **{"transactional.id": f"t-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    last: dict[int, int] = {}
    with running(consumer):
        sent = 0
        while sent < len(commands):
            batch = commands[sent : sent + rng.randint(1, 30)]
            written: dict[int, int] = {}

            def delivered(err: KafkaError | None, msg: Message, into: dict[int, int] = written) -> None:
                into[int(msg.partition() or 0)] = int(msg.offset() or 0)

            producer.begin_transaction()
            for command in batch:
                producer.produce(
                    topics.topic("cmd.fetch-order"),
                    value=encode(command),
                    key=command.correlation_id.encode(),
                    on_delivery=delivered,
                )
            producer.flush(10)
            if rng.random() < 0.15:
                producer.abort_transaction(30)  # the PM retries such a batch: the same commands again
                continue
            producer.commit_transaction(30)
            last.update(written)
            sent += len(batch)
            time.sleep(rng.random() * 0.01)
        assert answers.wait(commands, timeout=20) == {c.event_id for c in commands}

        def committed_to_the_end() -> bool:
            committed = _committed(topics, consumer)
            return all(committed[p] > offset for p, offset in last.items())

        _wait(committed_to_the_end, 10, "every partition committed past its last command")
    assert consumer.stats["pauses"] >= 20, consumer.stats
