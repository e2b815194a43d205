"""The step-consumer base: `cmd.<step>` in, one result per command on `step.results`, at-least-once, idempotent.

One consumer may run several steps (`StepConsumer(config, [h1, h2])`, `pm run consumer A B`): one
Kafka consumer and producer for all of them (a broker serves one fetch per consumer, whatever the
topics), while each step keeps its own lane: handler, ledger, worker pool, buffer and pause. The
group is `<prefix>step-<name>` for one step and `<prefix>step-<a>+<b>` (sorted) for several; a step
must be in one running set only (two groups would both run its commands).

One thread owns the Kafka consumer (poll, commit, pause/resume) and serves the producer's
delivery callbacks; a bounded pool of worker threads runs `handler.handle`, which may block on I/O
for seconds, and publishes its result at once (step 4). Per record:

1. decode (`pm.codec`); undecodable or not this step's command -> `pm.dlq` with reason headers;
2. look the command ID up in the ledger: completed -> re-publish the recorded result bytes,
   never run the handler again; a command already in flight here -> wait for that run;
3. otherwise run the handler in the pool: `TransientError` retried with exponential backoff and
   full jitter up to a budget, then a failed result with `retryable=True`; `PermanentError` and
   unexpected exceptions -> a failed result with `retryable=False`;
4. record the result in the ledger, publish it keyed by correlation ID, and once the broker
   acknowledged it mark the record done.

Offsets are committed per partition up to the first record that is not done, so a slow
command never blocks other correlation IDs and a crash never skips an unfinished one
(redelivery is safe: the ledger answers).

Backpressure: at most `concurrency` handlers run; up to `max_buffered` more commands wait
locally (default `max(4 * concurrency, 64)`; the consumer thread takes up to `consume_batch`
records per loop, a quarter of that buffer or 32, so it can pass it by fewer). When that buffer
is full the assigned partitions are paused, and resumed once half of it has drained - not at
every freed slot, because a pause/resume cycle is expensive: librdkafka drops the prefetched
records on pause, and on resume its fetcher thread, which sleeps up to 1 s while it has nothing
to fetch, is not woken (the fetch state stays "active"). `_resume` therefore seeks every resumed
partition to its position: a no-op for the offsets, but a fetch-state change, which wakes the fetcher at once.
A rebalance does not end a pause: partitions handed over while a step's buffer is full are paused
with the rest of its topic, and `_resume` resumes the step's whole assignment. Steps sharing a
consumer share its rebalances: while a revoke waits for the revoked partitions' running commands
(up to `stop_grace`), no step fetches.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry.trace import Status, StatusCode

from pm import telemetry
from pm.codec import CodecError, decode, encode
from pm.config import Config
from pm.dlq import dead_letter
from pm.events import CommandPayload, Event
from pm.steps.handler import PermanentError, StepHandler, TransientError, failed_result
from pm.steps.ledger import Ledger, ledger_path

if TYPE_CHECKING:
    from pm.app import App
from pm.kafka import make_consumer, make_producer
from pm.topics import step_set_name

__all__ = [
    "RetryPolicy",
    "LedgerAware",
    "OffsetTracker",
    "StepConsumer",
    "run_step_consumer",
]

log = logging.getLogger("pm.consumers")

Headers = telemetry.Headers
TP = tuple[str, int]
COMMIT_INTERVAL = 0.1  # seconds between asynchronous offset commits
RESULT_MARGIN = 4096  # bytes of a record beside its value (key, trace headers, framing)
# A result produced while the consumer is busy (at least BULK_WHEN_IN_FLIGHT commands in flight, its
# own included) waits up to BULK_LINGER_MS for company in one produce request: the broker's cost follows
# requests (a quarter less broker CPU per process under load in bench e2e). Any other result goes at
# once (linger 0) through the express producer: each step hop of an unloaded process, and a process's
# own fan-out (commands issued together: the first result used to wait 50 ms for a request of its own).
CONSUME_BATCH = 32  # records at most per loop of the consumer thread (see `_fetched`)
BULK_LINGER_MS = 50
BULK_WHEN_IN_FLIGHT = 4
EXPRESS_LINGER_MS = 0


@dataclass(frozen=True)
class RetryPolicy:
    """Transient-error budget: `tries` calls in all, sleeping `uniform(0, min(max_delay, base_delay * 2**n))`."""

    tries: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): spreads retries of many workers hitting the same outage."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1))))


@runtime_checkable
class LedgerAware(Protocol):
    """A handler that marks intermediate ledger states itself (e.g. `sending` / `sent` around a side effect).

    The base calls `use_ledger` once, before the first `handle`, with the consumer's ledger.
    """

    def use_ledger(self, ledger: Ledger) -> None: ...


class OffsetTracker:
    """Per partition, the offsets received in order and whether each is done; commits the contiguous prefix."""

    def __init__(self) -> None:
        self._offsets: dict[TP, OrderedDict[int, bool]] = {}
        self._position: dict[TP, int] = {}  # next offset to commit
        self._dirty: set[TP] = set()

    def add(self, tp: TP, offset: int) -> None:
        self._offsets.setdefault(tp, OrderedDict())[offset] = False

    def done(self, tp: TP, offset: int) -> None:
        offsets = self._offsets.get(tp)
        if offsets is None or offset not in offsets:
            return  # partition revoked meanwhile: its new owner redoes it (the ledger answers)
        offsets[offset] = True
        while offsets:
            first, finished = next(iter(offsets.items()))
            if not finished:
                break
            offsets.popitem(last=False)
            self._position[tp] = first + 1
            self._dirty.add(tp)

    def take_commits(self, partitions: Iterable[TP] | None = None) -> list[TopicPartition]:
        """Positions that advanced since the last call (for `partitions`, or all)."""
        chosen = self._dirty if partitions is None else self._dirty & set(partitions)
        commits = [TopicPartition(t, p, self._position[(t, p)]) for t, p in sorted(chosen)]
        self._dirty -= chosen
        return commits

    def pending(self, partitions: Iterable[TP] | None = None) -> int:
        """Records received but not done."""
        keys = self._offsets.keys() if partitions is None else partitions
        return sum(1 for tp in keys for finished in self._offsets.get(tp, {}).values() if not finished)

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self._offsets.pop(tp, None)
            self._position.pop(tp, None)
            self._dirty.discard(tp)


@dataclass(eq=False)
class _Lane:
    """One step of a consumer: its handler, ledger, worker pool, and flow control over its topic."""

    step: str
    topic: str  # physical cmd.<step>
    handler: StepHandler
    ledger: Ledger | None = None  # opened by `run`
    work: queue.Queue[_Work | None] = field(default_factory=queue.Queue)
    inflight: int = 0  # running and waiting
    paused: bool = False


@dataclass
class _Work:
    """One command being handled, and every record (duplicates included) that waits for its result."""

    lane: _Lane
    command: Event
    headers: Headers
    refs: list[tuple[TP, int]] = field(default_factory=list)
    result: Event | None = None  # None after the run: abandoned (stopping)
    result_headers: Headers = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


class StepConsumer:
    """Runs steps' handlers over their `cmd.<step>` topics; `run()` blocks until `stop` is set (or `request_stop()`).

    `handler` is one handler, or several (one per step) sharing this consumer; `concurrency` and
    `max_buffered` apply to each step.
    """

    def __init__(
        self,
        config: Config,
        handler: StepHandler | Sequence[StepHandler],
        *,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        stop_grace: float = 10.0,
        poll_timeout: float = 0.05,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
        max_buffered: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_buffered is not None and max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        handlers = list(handler) if isinstance(handler, Sequence) else [handler]
        if not handlers:
            raise ValueError("a step consumer needs at least one handler")
        steps = [str(h.step) for h in handlers]  # steps are an open set: the app names them
        if len(set(steps)) != len(steps):
            raise ValueError(f"a step is given twice: {steps}")
        self.config = config
        self.concurrency = concurrency
        # Commands polled but not started; together with the running ones, what pauses a step's topic.
        self.max_buffered = max_buffered if max_buffered is not None else max(4 * concurrency, 64)
        # Records taken per loop: a step's buffer can overshoot `max_buffered` by fewer than this.
        self.consume_batch = max(1, min(CONSUME_BATCH, self.max_buffered // 4))
        self._lanes: dict[str, _Lane] = {}  # physical cmd topic -> lane
        for step, step_handler in zip(steps, handlers, strict=True):
            topic = config.topic(f"cmd.{step}")
            self._lanes[topic] = _Lane(step, topic, step_handler)
        self.steps = tuple(steps)
        self.step = step_set_name(steps)  # the consumer's name: logs, client ID, group
        self.topic = next(iter(self._lanes))  # the first step's topic (the only one, for one step)
        self.topics = tuple(self._lanes)
        self.retry = retry or RetryPolicy()
        self.stop_grace = stop_grace
        self.poll_timeout = poll_timeout
        self.clock = clock
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self.group_id = f"{config.topic_prefix}step-{self.step}"
        self.results_topic = config.topic("step.results")
        self.dlq_topic = config.topic("pm.dlq")
        self._stop = threading.Event()
        self._stopping = threading.Event()  # set once polling stopped: workers abandon backoff sleeps
        self._finished: queue.Queue[_Work] = queue.Queue()
        self._inflight: dict[tuple[str, str], _Work] = {}  # (step, command ID) -> its run
        self._tracker = OffsetTracker()
        self._last_commit = 0.0  # monotonic time of the last asynchronous commit
        self._fatal: BaseException | None = None
        self._workers: list[threading.Thread] = []  # started by `run`; each ends on a None from its lane
        self._owner: threading.Thread | None = None  # the thread in `run`: polls, serves callbacks
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None  # a result produced alone: sent at once
        self._bulk: Producer | None = None  # results produced while others are in flight: batched
        self.stats = {"handled": 0, "republished": 0, "dead_lettered": 0, "abandoned": 0, "pauses": 0, "batched": 0}
        self._stats_lock = threading.Lock()  # workers count too (`_publish`): `+=` on a dict item is not atomic

    @property
    def _paused(self) -> bool:
        """Some step's topic is paused (for one step: the consumer is)."""
        return any(lane.paused for lane in self._lanes.values())

    # ------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        self._owner = threading.current_thread()
        lanes = list(self._lanes.values())
        try:
            for lane in lanes:
                lane.ledger = Ledger(ledger_path(self.config, lane.step))
                if isinstance(lane.handler, LedgerAware):
                    lane.handler.use_ledger(lane.ledger)
            role = f"step-{self.step}"
            self._producer = make_producer(self.config, role, **{"linger.ms": EXPRESS_LINGER_MS})
            self._bulk = make_producer(self.config, f"{role}-bulk", **{"linger.ms": BULK_LINGER_MS})
            self._consumer = make_consumer(self.config, role, self.group_id)
            self._workers = [
                threading.Thread(target=self._worker, args=(lane,), name=f"step-{lane.step}-worker-{i}", daemon=True)
                for lane in lanes
                for i in range(self.concurrency)
            ]
            for worker in self._workers:
                worker.start()
            self._consumer.subscribe(
                list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            log.info("step %s: consuming %s as group %s", self.step, ", ".join(self.topics), self.group_id)
            while not self._stop.is_set():
                if all(lane.paused for lane in lanes):
                    # Nothing to fetch: wait for a finished command (the next resume), not for a record;
                    # poll(0) still serves rebalances and errors.
                    self._service(wait=self.poll_timeout)
                    messages = self._one(self._consumer.poll(0))
                else:
                    self._service()
                    messages = self._fetched()
                for msg in messages:
                    error = msg.error()
                    if error is not None:
                        self._on_error(error)
                        continue
                    self._receive(msg)
            self._shutdown()
        finally:
            if not self._stopping.is_set():  # a failure, not `_shutdown`: queued commands stay
                # uncommitted (redone after a restart); no worker outlives the consumer to start one
                # with its ledger closed.
                self._stopping.set()
                self._release_workers()
            if self._consumer is not None:
                self._consumer.close()
            # Released (flushed already after a clean stop): after a failure it kept reconnecting for
            # as long as this object lived. A worker still running publishes nothing (uncommitted).
            self._producer = self._bulk = None
            for lane in lanes:
                if lane.ledger is not None:
                    lane.ledger.close()

    def _fetched(self) -> list[Message]:
        """The records fetched already (up to `consume_batch`), else the first within `poll_timeout`.

        Under load one loop takes several records (a `_service` and a poll per batch, not per record);
        `consume(n, timeout)` itself would hold a lone record until n arrive or the timeout ends.
        """
        assert self._consumer is not None
        messages = self._consumer.consume(self.consume_batch, 0)
        return messages if messages else self._one(self._consumer.poll(self.poll_timeout))

    @staticmethod
    def _one(msg: Message | None) -> list[Message]:
        return [] if msg is None else [msg]

    def _producers(self) -> tuple[Producer, Producer]:
        """The express producer and the batching one (both made by `run`)."""
        assert self._producer is not None and self._bulk is not None
        return self._producer, self._bulk

    def _release_workers(self) -> None:
        """Abandon the commands queued but not started (uncommitted, so redelivered later); workers end."""
        for lane in self._lanes.values():
            while True:
                try:
                    work = lane.work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    self._abandon(work)
            for _ in range(self.concurrency):
                lane.work.put(None)  # one per worker: each ends when it takes one

    def _shutdown(self) -> None:
        """Stop polling; let running handlers finish within the grace period; abandon the rest; commit."""
        self._stopping.set()
        self._release_workers()
        deadline = time.monotonic() + self.stop_grace
        while self._inflight and time.monotonic() < deadline:
            self._service(wait=0.05)
        for work in list(self._inflight.values()):
            self._abandon(work)
        remaining = sum(producer.flush(self.stop_grace) for producer in self._producers())
        if remaining:
            log.warning(
                "step %s: %d results not acknowledged at stop; they are redone on restart",
                self.step,
                remaining,
            )
        self._service()
        self._commit(asynchronous=False)

    def _admit(self, work: _Work) -> None:
        self._inflight[(work.lane.step, work.command.payload.command_id)] = work
        work.lane.inflight += 1
        work.lane.work.put(work)

    def _release(self, work: _Work) -> None:
        if self._inflight.pop((work.lane.step, work.command.payload.command_id), None) is not None:
            work.lane.inflight -= 1

    def _abandon(self, work: _Work) -> None:
        self._release(work)
        self._count("abandoned")

    # ------------------------------------------------------------ main thread

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("step %s: consumer error: %s", self.step, error)

    def _receive(self, msg: Message) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        tp = (topic, partition)
        self._tracker.add(tp, offset)
        lane = self._lanes.get(topic)
        if lane is None:  # not subscribed: cannot happen, but never a silent skip
            self._dead_letter(msg, f"{topic} is not a topic of {self.step}", "UnexpectedTopic", self.step)
            return
        value = msg.value()
        try:
            command = decode(value or b"")
        except CodecError as exc:
            self._dead_letter(msg, str(exc), type(exc).__name__, lane.step)
            return
        if (
            not isinstance(command.payload, CommandPayload)
            or getattr(type(command), "STEP", None) != lane.step
        ):
            self._dead_letter(
                msg, f"{command.type} is not a {lane.step} command", "UnexpectedEventType", lane.step
            )
            return
        command_id = command.payload.command_id
        raw_headers = msg.headers() or []
        headers: Headers = list(raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)
        assert lane.ledger is not None
        entry = lane.ledger.get(command_id)
        if entry is not None and entry.completed and entry.result is not None:
            # Done before (redelivery, or the PM re-sent it): the same bytes, not a second side effect.
            with telemetry.span(
                f"step {lane.step}",
                lambda: {**telemetry.event_attributes(command), "pm.step.replayed": True},
                context=telemetry.extract(headers),
            ):
                result_headers = telemetry.inject([])
            self._count("republished")
            self._publish(
                self.results_topic,
                command.correlation_id.encode(),
                entry.result,
                result_headers,
                [(tp, offset)],
            )
            return
        running = self._inflight.get((lane.step, command_id))
        if running is not None:  # the same command twice in flight: one run, both records wait for it
            running.refs.append((tp, offset))
            return
        self._admit(_Work(lane=lane, command=command, headers=headers, refs=[(tp, offset)]))
        self._flow_control(lane)

    def _service(self, wait: float = 0.0) -> None:
        """Count finished commands, serve delivery callbacks, commit what is contiguous, pause/resume."""
        if self._fatal is not None:
            raise self._fatal
        try:
            work: _Work | None = self._finished.get(timeout=wait) if wait else self._finished.get_nowait()
        except queue.Empty:
            work = None
        while work is not None:  # published by its worker already (`_complete`): bookkeeping only
            self._release(work)
            if work.result is None:
                self._count("abandoned")
            else:
                self._count("handled")
                # Issued (the command's occurred_at, from the PM) to answered, queueing in cmd.<step> included.
                telemetry.command_round_trip().record(
                    max(0.0, (work.result.occurred_at - work.command.occurred_at).total_seconds()),
                    {"pm.step": work.lane.step},
                )
            try:
                work = self._finished.get_nowait()
            except queue.Empty:
                work = None
        for producer in self._producers():
            producer.poll(0)
        if self._fatal is not None:
            raise self._fatal
        # At most one asynchronous commit per COMMIT_INTERVAL: one per loop was a commit request per
        # result under load. Committing later is safe (a redelivered command is answered from the
        # ledger); revoke and shutdown commit synchronously, whatever the interval.
        if time.monotonic() - self._last_commit >= COMMIT_INTERVAL:
            self._last_commit = time.monotonic()
            self._commit(asynchronous=True)
        for lane in self._lanes.values():
            self._flow_control(lane)

    def _flow_control(self, lane: _Lane) -> None:
        """Pause a step's topic when `max_buffered` commands wait besides the running ones; resume at half."""
        if self._consumer is None or self._stopping.is_set():
            return
        if not lane.paused and lane.inflight >= self.concurrency + self.max_buffered:
            self._consumer.pause(self._assigned(lane))
            lane.paused = True
            self._count("pauses")
        elif lane.paused and lane.inflight <= self.concurrency + self.max_buffered // 2:
            self._resume(lane)
            lane.paused = False

    def _assigned(self, lane: _Lane) -> list[TopicPartition]:
        assert self._consumer is not None
        return [tp for tp in self._consumer.assignment() if tp.topic == lane.topic]

    def _resume(self, lane: _Lane) -> None:
        assert self._consumer is not None
        assignment = self._assigned(lane)
        self._consumer.resume(assignment)
        # librdkafka does not wake its fetcher on resume: it would sleep on up to 1 s before fetching.
        # A seek to the position it resumes from anyway changes the fetch state, which wakes the
        # partition's broker thread (and on Kafka validates the position with the leader epoch, as any
        # seek does). Partitions with no position yet (nothing consumed) are left alone: the wake-up of
        # their broker thread by the others' seeks, or at worst its 1 s timer, restarts them.
        try:
            for tp in self._consumer.position(assignment):
                if tp.offset >= 0:
                    self._consumer.seek(tp)
        except KafkaException as exc:  # e.g. a rebalance meanwhile: fetching still resumes, only later
            log.debug("step %s: seek after resume failed: %s", lane.step, exc)

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1

    def _publish(
        self, topic: str, key: bytes, value: bytes, headers: Headers, refs: list[tuple[TP, int]]
    ) -> None:
        """Produce; when the broker acknowledges, the records in `refs` are done (committable).

        Batched (`BULK_LINGER_MS`) when the consumer is busy (`BULK_WHEN_IN_FLIGHT`): other results follow soon.
        """
        bulk = len(self._inflight) >= BULK_WHEN_IN_FLIGHT  # this command counts until the main thread releases it
        if bulk:
            self._count("batched")
        attempts = [0]

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                for tp, offset in refs:
                    self._tracker.done(tp, offset)
                return
            attempts[0] += 1
            if err.fatal() or attempts[0] > 5:
                self._fatal = KafkaException(err)
                return
            log.warning("step %s: delivery to %s failed (%s); producing again", self.step, topic, err)
            self._produce(topic, key, value, headers, delivered, bulk=bulk)

        self._produce(topic, key, value, headers, delivered, bulk=bulk)

    def _produce(
        self, topic: str, key: bytes, value: bytes, headers: Headers, callback: Any, *, bulk: bool = False
    ) -> None:
        producer = self._bulk if bulk else self._producer
        assert producer is not None
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                return
            except BufferError:  # local queue full: try again, never drop
                if threading.current_thread() is self._owner:
                    producer.poll(0.1)  # serves the callbacks that free the queue
                else:  # a worker: delivery callbacks belong to the main thread (offset bookkeeping)
                    time.sleep(0.05)

    def _dead_letter(self, msg: Message, reason: str, error_type: str, step: str) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        record, headers = dead_letter(
            self.config.logical_topic(topic),
            partition,
            offset,
            msg.key(),
            msg.value(),
            reason=reason,
            error_type=error_type,
            failed_by=f"step-{step}",
            now=self.clock(),
        )
        log.warning("step %s: %s/%d/%d to the DLQ: %s", step, topic, partition, offset, reason)
        self._count("dead_lettered")
        telemetry.dlq_records().add(
            1, {"messaging.destination.name": record.payload.source_topic, "error.type": error_type}
        )
        self._publish(
            self.dlq_topic, msg.key() or b"", encode(record), headers, [((topic, partition), offset)]
        )

    def _commit(self, asynchronous: bool, partitions: Iterable[TP] | None = None) -> None:
        assert self._consumer is not None
        commits = self._tracker.take_commits(partitions)
        if commits:
            try:
                if asynchronous:
                    self._consumer.commit(offsets=commits, asynchronous=True)
                else:
                    self._consumer.commit(offsets=commits, asynchronous=False)
            except KafkaException as exc:  # e.g. during a rebalance; the next commit covers it
                log.warning("step %s: commit failed: %s", self.step, exc)

    # ------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps an application pause across revoke/assign, so a partition handed to us takes
        # the state of our flow control explicitly: fetching, or paused with the rest of the assignment
        # while we are full (`_resume` resumes the step's whole assignment). Never forget a pause here: an
        # incremental (cooperative) rebalance hands over only the partitions that move, and the kept
        # ones, paused while we were full, would then stay paused for good - every later command on
        # them stranded until the PM's step timeout, and its retry (same key, same partition) too.
        consumer.resume(partitions)
        paused = [p for p in partitions if (lane := self._lanes.get(p.topic)) is not None and lane.paused]
        if paused:
            consumer.pause(paused)
        log.info("step %s: assigned %s", self.step, [f"{p.topic}/{p.partition}" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Give in-flight commands of the revoked partitions a bounded time to finish, commit, then let go."""
        revoked = [(p.topic, p.partition) for p in partitions]
        # Stopping: `_shutdown` waited its grace already; what is left was abandoned (redone later).
        deadline = time.monotonic() + (0.0 if self._stopping.is_set() else self.stop_grace)
        try:
            while self._tracker.pending(revoked) and time.monotonic() < deadline and self._fatal is None:
                self._service(wait=0.05)  # may raise a worker's fatal error: commit what is done anyway
        finally:
            self._commit(asynchronous=False, partitions=revoked)
            self._tracker.forget(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._tracker.forget([(p.topic, p.partition) for p in partitions])

    # ------------------------------------------------------------ workers

    def _worker(self, lane: _Lane) -> None:
        while True:
            work = lane.work.get()
            if work is None:
                return
            try:
                self._run(work)
            except BaseException as exc:  # never lose a worker; the record stays uncommitted
                log.exception("step %s: worker failed", lane.step)
                if work.result is None:  # a result the handler returned stands (its side effect is done)
                    work.result = failed_result(
                        work.command,
                        lane.step,
                        self.clock(),
                        reason=f"{type(exc).__name__}: {exc}",
                        retryable=False,
                    )
            if work.result is not None:
                try:
                    self._complete(work)
                except BaseException as exc:  # the main thread raises it (the record stays uncommitted)
                    self._fatal = exc
            self._finished.put(work)

    def _complete(self, work: _Work) -> None:
        """Record the result in the ledger, then publish it: from the worker, the moment the handler returns.

        (From the main thread it waited for the loop to come round, up to a whole poll timeout: ~50 ms
        per step hop of a process.) The delivery callback runs on the main thread, in its producer
        poll; a copy of the command received meanwhile either finds the ledger completed (and is
        answered from it) or joins `refs` before that callback can run.
        """
        assert work.result is not None
        lane = work.lane
        assert lane.ledger is not None
        try:
            encoded = encode(work.result)
        except CodecError as exc:  # a handler built a result the schema cannot carry: report it
            work.result = failed_result(
                work.command, lane.step, self.clock(), reason=f"result not encodable: {exc}", retryable=False
            )
            encoded = encode(work.result)
        limit = self.config.max_record_bytes - RESULT_MARGIN
        if len(encoded) > limit:  # the broker would refuse it, and the ledger would replay it for ever
            reason = f"result of {len(encoded)} bytes, over the {limit} bytes a result record may have"
            work.result = failed_result(work.command, lane.step, self.clock(), reason=reason, retryable=False)
            encoded = encode(work.result)
        lane.ledger.complete(work.command.payload.command_id, encoded)
        key = work.command.correlation_id.encode()
        self._publish(self.results_topic, key, encoded, work.result_headers, work.refs)

    def _run(self, work: _Work) -> None:
        command, step = work.command, work.lane.step
        with telemetry.span(
            f"step {step}",
            lambda: {
                **telemetry.event_attributes(command),
                **telemetry.record_attributes(f"cmd.{step}"),
                "correlation_id": command.correlation_id,
                "command_id": command.payload.command_id,
                "step": step,
                "attempt": command.payload.attempt,
            },
            context=telemetry.extract(work.headers),
        ) as span:
            result, tries = self._execute(work.lane, command)
            if span is not None:
                span.set_attribute("pm.step.tries", tries)
                if result is not None:
                    span.set_attribute("pm.result_type", result.type)
                    if result.type == "StepFailed":
                        span.set_status(Status(StatusCode.ERROR, result.payload.reason[:200]))
            work.result = result
            work.result_headers = telemetry.inject([])

    def _execute(self, lane: _Lane, command: Event) -> tuple[Event | None, int]:
        """The handler's result, or a failed result; None when stopping interrupted a retry (abandon)."""
        last: TransientError | None = None
        tries = 0
        while tries < self.retry.tries:
            tries += 1
            try:
                result = lane.handler.handle(command, self.clock())
                if not isinstance(result, Event):  # a handler bug (a path without `return`): never a stall
                    reason = f"the handler returned {type(result).__name__}, not a result event"
                    return failed_result(command, lane.step, self.clock(), reason=reason, retryable=False), tries
                return result, tries
            except TransientError as exc:
                last = exc
                log.info(
                    "step %s: transient error (try %d/%d): %s", lane.step, tries, self.retry.tries, exc
                )
                if tries >= self.retry.tries:
                    break
                with self._rng_lock:
                    delay = self.retry.delay(tries, self._rng)
                if self._stopping.wait(delay):
                    return None, tries
            except PermanentError as exc:
                return failed_result(
                    command, lane.step, self.clock(), reason=exc.reason, retryable=False, errors=exc.errors
                ), tries
            except Exception as exc:  # a handler bug must not kill the consumer: report it to the PM
                log.exception("step %s: handler raised", lane.step)
                return failed_result(
                    command, lane.step, self.clock(), reason=f"{type(exc).__name__}: {exc}", retryable=False
                ), tries
        reason = f"gave up after {tries} tries: {last}"
        return failed_result(command, lane.step, self.clock(), reason=reason, retryable=True), tries


def run_step_consumer(
    config: Config,
    step: str | Sequence[str],
    *,
    concurrency: int = 4,
    retry: RetryPolicy | None = None,
    options: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    app: App | None = None,
) -> StepConsumer:
    """Build the steps' handlers from the app and run them on one consumer until SIGTERM/SIGINT (or `stop`).

    Each step's handler gets those of `options` it declares (`StepSpec.options`).
    """
    from pm.app import load_app

    the_app = app or load_app(config.app or None)
    specs = [the_app.step(name) for name in ([step] if isinstance(step, str) else step)]
    options = options or {}
    taken = {option for spec in specs for option in spec.options}
    if set(options) - taken:
        raise ValueError(f"options {sorted(set(options) - taken)} apply to none of the steps {[s.name for s in specs]}")
    handlers = [
        spec.build_handler(config, **{k: v for k, v in options.items() if k in spec.options}) for spec in specs
    ]
    consumer = StepConsumer(config, handlers, concurrency=concurrency, retry=retry)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):
                signal.signal(signum, lambda *_: stop.set())
    consumer.run(stop)
    return consumer
