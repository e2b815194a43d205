"""The step-consumer base through a real broker, with a scripted handler (the base is under test)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from confluent_kafka import TopicPartition
from consumer_kit import Reader, fetch_order, produce, produce_raw, running

from customer_email.events import OrderFetched, OrderFetchedPayload, Step
from pm.codec import decode
from pm.config import Config
from pm.events import DlqRecord, Event, StepFailed
from pm.kafka import make_consumer
from pm.steps.consumer import OffsetTracker, RetryPolicy, StepConsumer
from pm.steps.handler import PermanentError, TransientError, failed_result, result_event

FAST = RetryPolicy(tries=3, base_delay=0.01, max_delay=0.05)


class Scripted:
    """A fetch-order handler whose behaviour per call is a function; counts calls and concurrency."""

    step = Step.FETCH_ORDER

    def __init__(self, behaviour: Callable[[Event, int], None] | None = None) -> None:
        self.behaviour = behaviour or (lambda command, call: None)
        self.calls: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def handle(self, command: Event, now: datetime) -> Event:
        with self.lock:
            call = self.calls.get(command.payload.command_id, 0) + 1
            self.calls[command.payload.command_id] = call
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.behaviour(command, call)
        finally:
            with self.lock:
                self.in_flight -= 1
        payload = command.payload
        return result_event(
            command,
            OrderFetched,
            OrderFetchedPayload(
                command_id=payload.command_id, attempt=1, order_id=payload.order_id, found=False
            ),
            now,
        )


def test_offset_tracker_commits_only_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    tp = ("t", 0)
    for offset in (5, 6, 7):
        tracker.add(tp, offset)
    tracker.done(tp, 6)
    tracker.done(tp, 7)
    assert tracker.take_commits() == []
    tracker.done(tp, 5)
    assert [(c.partition, c.offset) for c in tracker.take_commits()] == [(0, 8)]
    assert tracker.pending() == 0


def test_transient_errors_retried_then_retryable_failure(topics: Config) -> None:
    def always(command: Event, call: int) -> None:
        raise TransientError(f"down (call {call})")

    handler = Scripted(always)
    reader = Reader(topics)
    command = fetch_order("A-1")
    with running(StepConsumer(topics, handler, retry=FAST)):
        produce(topics, command)
        (result,) = reader.take(1)
    assert isinstance(result, StepFailed)
    assert result.payload.retryable is True and result.payload.uncertain is False
    assert "gave up after 3 tries" in result.payload.reason and "down (call 3)" in result.payload.reason
    assert handler.calls[command.payload.command_id] == 3
    assert result.causation_id == command.event_id and result.correlation_id == command.correlation_id


def test_transient_then_success_permanent_and_bug(topics: Config) -> None:
    def script(command: Event, call: int) -> None:
        order_id = command.payload.order_id
        if order_id == "flaky" and call < 3:
            raise TransientError("blip")
        if order_id == "bad":
            raise PermanentError("bad input", ["order_id: not a real order"])
        if order_id == "bug":
            raise KeyError("oops")

    handler = Scripted(script)
    reader = Reader(topics)
    commands = [fetch_order(name) for name in ("flaky", "bad", "bug")]
    with running(StepConsumer(topics, handler, retry=FAST)):
        produce(topics, *commands)
        results = {r.causation_id: r for r in reader.take(3)}
    flaky, bad, bug = (results[c.event_id] for c in commands)
    assert isinstance(flaky, OrderFetched)
    assert handler.calls[commands[0].payload.command_id] == 3
    assert isinstance(bad, StepFailed) and bad.payload.retryable is False
    assert bad.payload.reason == "bad input" and bad.payload.errors == ["order_id: not a real order"]
    assert isinstance(bug, StepFailed) and bug.payload.retryable is False
    assert bug.payload.reason.startswith("KeyError")


def test_redelivered_command_republishes_the_recorded_result(topics: Config) -> None:
    handler = Scripted()
    reader = Reader(topics)
    command = fetch_order("A-1")
    with running(StepConsumer(topics, handler)):
        produce(topics, command)
        reader.take(1)
        produce(topics, command)  # the PM (or a broker quirk) sends it again
        reader.take(1)
    with running(StepConsumer(topics, Scripted())):  # a restarted consumer: the ledger still answers
        produce(topics, command)
        reader.take(1)
    assert handler.calls == {command.payload.command_id: 1}
    values = [m.value() for m in reader.raw]
    assert values[0] == values[1] == values[2]


def test_concurrency_cap_and_no_head_of_line_blocking(topics: Config) -> None:
    release = threading.Event()
    corr = f"slow-{uuid.uuid4().hex[:6]}"

    def script(command: Event, call: int) -> None:
        if command.payload.order_id == "slow":
            release.wait(20)
        else:
            time.sleep(0.15)

    handler = Scripted(script)
    reader = Reader(topics)
    consumer = StepConsumer(topics, handler, concurrency=3)
    blocker = fetch_order("slow", correlation_id=corr)
    # o1 shares the blocker's correlation ID (so its partition) but is another command (attempt 2).
    others = [
        fetch_order(f"o{i}", correlation_id=corr if i == 1 else None, attempt=2 if i == 1 else 1)
        for i in range(1, 13)
    ]
    with running(consumer):
        produce(topics, blocker, *others)
        # Everything but the blocked command completes while it is still blocked.
        done = reader.take(len(others))
        assert not release.is_set() and handler.in_flight == 1
        assert {r.causation_id for r in done} == {c.event_id for c in others}
        # The blocker's partition is not committed past it while it runs.
        probe = make_consumer(topics, "probe", consumer.group_id)
        partitions = [TopicPartition(consumer.topic, p) for p in range(6)]
        committed = {tp.partition: tp.offset for tp in probe.committed(partitions, timeout=10)}
        probe.close()
        assert committed[_partition_of(reader, corr)] in (0, -1001)  # blocker is offset 0 there
        release.set()
        reader.take(1)
    assert handler.max_in_flight == 3


def test_full_buffer_pauses_and_stays_bounded(topics: Config) -> None:
    release = threading.Event()

    def stuck(command: Event, call: int) -> None:
        release.wait(20)

    handler = Scripted(stuck)
    reader = Reader(topics)
    consumer = StepConsumer(topics, handler, concurrency=2, max_buffered=3)
    commands = [fetch_order(f"b{i}") for i in range(12)]
    with running(consumer):
        produce(topics, *commands)
        deadline = time.monotonic() + 15
        while (consumer.stats["pauses"] < 1 or handler.in_flight < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert consumer.stats["pauses"] == 1 and handler.in_flight == 2
        # Paused: nothing more is taken in while the handlers are stuck (2 running + 3 waiting).
        most = 0
        for _ in range(25):
            most = max(most, len(consumer._inflight))
            time.sleep(0.02)
        assert most == 5 and handler.in_flight == 2
        release.set()
        results = reader.take(len(commands))
    assert {r.causation_id for r in results} == {c.event_id for c in commands}
    assert handler.max_in_flight == 2


def test_short_handler_not_throttled_by_pause_resume(topics: Config) -> None:
    # A pause/resume cycle used to cost ~1 s (librdkafka's fetcher was not woken on resume): with a
    # small buffer that throttled a 5 ms handler to a few commands per second.
    handler = Scripted(lambda command, call: time.sleep(0.005))
    reader = Reader(topics)
    consumer = StepConsumer(topics, handler, concurrency=4, max_buffered=4)
    commands = [fetch_order(f"t{i}") for i in range(200)]
    produce(topics, *commands)
    with running(consumer):
        start = time.monotonic()
        results = reader.take(len(commands), timeout=60)
        elapsed = time.monotonic() - start
    assert len({r.causation_id for r in results}) == len(commands)
    assert consumer.stats["pauses"] >= 1 and handler.max_in_flight <= 4
    assert elapsed < 10, f"200 commands took {elapsed:.1f} s"


def test_resumed_partitions_are_fetched_at_once(topics: Config) -> None:
    # One running, one waiting: every completion resumes, and the next record must arrive while the
    # waiting command runs (0.3 s). Without the seek in `_resume` the fetcher slept on (gaps ~0.3-0.7 s).
    starts: list[float] = []
    ends: list[float] = []

    def slow(command: Event, call: int) -> None:
        starts.append(time.monotonic())
        time.sleep(0.3)
        ends.append(time.monotonic())

    handler = Scripted(slow)
    reader = Reader(topics)
    consumer = StepConsumer(topics, handler, concurrency=1, max_buffered=1)
    commands = [fetch_order(f"r{i}") for i in range(6)]
    produce(topics, *commands)
    with running(consumer):
        reader.take(len(commands))
    gaps = [start - end for start, end in zip(starts[1:], ends, strict=False)]
    assert consumer.stats["pauses"] >= 2
    assert max(gaps) < 0.15, f"idle gaps between commands: {gaps}"


def _partition_of(reader: Reader, corr: str) -> int:
    # Results share the key with their command, and both topics have 6 partitions (murmur2).
    return next(m.partition() for m in reader.raw if m.key() == corr.encode())


def test_undecodable_command_to_dlq_and_next_processed(topics: Config) -> None:
    handler = Scripted()
    reader = Reader(topics)
    dlq = Reader(topics, "pm.dlq")
    command = fetch_order("A-1")
    with running(StepConsumer(topics, handler)):
        produce_raw(topics, "cmd.fetch-order", command.correlation_id.encode(), b"\xc3\x01garbage")
        produce(topics, command)
        (result,) = reader.take(1)
        (record,) = dlq.take(1)
    assert isinstance(result, OrderFetched)
    assert isinstance(record, DlqRecord)
    assert record.payload.source_topic == "cmd.fetch-order" and record.payload.value == b"\xc3\x01garbage"
    assert record.payload.failed_by == "step-fetch-order"
    headers = dict(dlq.raw[0].headers())
    assert headers["dlq.error_type"] == b"CodecError" and headers["dlq.reason"]
    assert decode(dlq.raw[0].value()) == record


def test_a_result_goes_out_when_its_handler_returns_not_at_the_next_poll(topics: Config) -> None:
    # The main thread waits in the consumer's poll; a finished result waited there for the whole poll
    # timeout (~50 ms per step in an e-mail's path). With a 6 s poll timeout, a result must not.
    returned: list[float] = []

    def slow(command: Event, call: int) -> None:
        time.sleep(0.2)  # the main thread is back in its poll by now
        returned.append(time.monotonic())

    reader = Reader(topics)
    with running(StepConsumer(topics, Scripted(slow), poll_timeout=6.0)):
        produce(topics, fetch_order("quick"))
        (result,) = reader.take(1, timeout=30)
        waited = time.monotonic() - returned[0]
    assert isinstance(result, OrderFetched)
    assert waited < 3.0, f"the result took {waited:.1f} s after its handler returned: it waited for the poll"


def test_a_lone_command_is_not_held_for_a_batch_of_records(topics: Config) -> None:
    # Under load the consumer thread takes up to `consume_batch` records per loop; `consume(n, timeout)`
    # would hold a lone record until n arrived or the poll timeout (6 s here) ran out.
    started: list[float] = []
    consumer = StepConsumer(topics, Scripted(lambda command, call: started.append(time.monotonic())))
    consumer.poll_timeout = 6.0
    assert consumer.consume_batch > 1
    reader = Reader(topics)
    with running(consumer):
        produce(topics, fetch_order("first"))
        reader.take(1, timeout=30)  # joined and fetching
        produced = time.monotonic()
        produce(topics, fetch_order("lone"))
        reader.take(1, timeout=30)
    assert started[-1] - produced < 3.0, f"the command waited {started[-1] - produced:.1f} s to start"


def test_results_of_a_busy_consumer_are_batched_and_a_lone_one_goes_at_once(topics: Config) -> None:
    # The broker's cost follows produce requests: results produced while other commands are in flight
    # go through the batching producer (linger BULK_LINGER_MS); a result produced alone does not wait.
    def slow(command: Event, call: int) -> None:
        time.sleep(0.2)

    reader = Reader(topics)
    consumer = StepConsumer(topics, Scripted(slow), concurrency=4)
    with running(consumer):
        produce(topics, *(fetch_order(f"burst-{i}") for i in range(8)))
        assert len(reader.take(8, timeout=30)) == 8
        deadline = time.monotonic() + 10
        while consumer.stats["handled"] < 8 and time.monotonic() < deadline:  # released by the main thread
            time.sleep(0.02)
        batched = consumer.stats["batched"]
        assert batched >= 4, consumer.stats  # at least the first four ran beside others
        produce(topics, fetch_order("alone"))
        (result,) = reader.take(1, timeout=30)
    assert isinstance(result, OrderFetched)
    assert consumer.stats["batched"] == batched, consumer.stats  # alone: the express producer


def test_a_process_fan_out_is_not_held_back_for_company(topics: Config) -> None:
    # One process's parallel commands (the e-mail's fetch-order and fetch-refund-policy) are in flight
    # together while nothing else is: the first result must not wait BULK_LINGER_MS in the batching
    # producer (the process needs both; it cost an unloaded e-mail ~50 ms).
    started: list[float] = []

    def slow(command: Event, call: int) -> None:
        started.append(time.monotonic())
        time.sleep(0.2)

    reader = Reader(topics)
    consumer = StepConsumer(topics, Scripted(slow), concurrency=4)
    with running(consumer):
        produce(topics, fetch_order("fan-1"), fetch_order("fan-2"))
        assert len(reader.take(2, timeout=30)) == 2
    assert len(started) == 2 and abs(started[1] - started[0]) < 0.15, "the two did not run side by side"
    assert consumer.stats["batched"] == 0, consumer.stats


def test_a_result_too_large_for_a_record_becomes_a_failed_result(topics: Config) -> None:
    # A huge result (e.g. a model's endless draft) would be refused by the broker, and replayed from the
    # ledger at every restart: it is answered as a permanent failure instead, and the partition flows.
    config = topics.with_overrides(max_record_bytes=8192)

    class Huge(Scripted):
        def handle(self, command: Event, now: datetime) -> Event:
            return failed_result(command, "fetch-order", now, reason="x" * 6000, retryable=True)

    class Empty(Scripted):  # a handler path without `return`: answered, never a stalled partition
        def handle(self, command: Event, now: datetime) -> Event:
            return None  # type: ignore[return-value]

    reader = Reader(config)
    for handler, order in ((Huge(), "huge"), (Empty(), "none")):
        command = fetch_order(order)
        with running(StepConsumer(config, handler)):
            produce(config, command)
            (result,) = reader.take(1)
        assert isinstance(result, StepFailed) and result.causation_id == command.event_id
        assert result.payload.retryable is False
        assert ("bytes a result record may have" if order == "huge" else "returned NoneType") in result.payload.reason
