"""The process manager: the consume-decide-commit loop, group assignment, and the wiring of its parts.

`run_once` drives one `Checkpoint` per batch through the commit steps (see `pm.runtime`);
`InputHandler` handles each input record, `PartitionRecovery` catches a partition up on
assignment, `Backpressure` pauses the topics that open new processes.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pm import telemetry
from pm.app import App, app_spec, load_app
from pm.codec import encode
from pm.config import Config
from pm.errors import PmError
from pm.fold import stuck
from pm.integrity import shown
from pm.journal import JOURNAL_TOPIC, Verifier
from pm.kafka import make_consumer, make_transactional_producer
from pm.process import ProcessDefinition
from pm.registry import Registry
from pm.runtime.backpressure import Backpressure
from pm.runtime.checkpoint import Change, Checkpoint, commit_transaction
from pm.runtime.inputs import InputHandler
from pm.runtime.rebuild import (
    MAX_WORKERS,
    WORKER_MIN_RECORDS,
    WORKER_PATIENCE,
    WorkerFolds,
    WorkerJob,
    WorkerResult,
    worker_count,
)
from pm.runtime.recovery import PartitionRecovery, journal_topic_id
from pm.runtime.state import ProcessCache, RetryTimes, UnconfirmedOutputs
from pm.store import PartitionStore, TimerEntry, store_path
from pm.timers import TimerService, fired_event
from pm.topics import check_topics, load_layout

TIMERS_TOPIC = "pm.timers"
PREFETCHED_PER_PARTITION = 3  # fetched, not yet handled: past this a partition skips fetches (see start)


@dataclass
class RuntimeStats:
    batches: int = 0
    handled: int = 0  # inputs journaled
    duplicates: int = 0
    reemitted: int = 0  # outputs produced again for inputs journaled by an unconfirmed transaction
    dlq: int = 0
    timers_fired: int = 0
    aborts: int = 0
    deferred: int = 0  # start-topic records put back because of backpressure
    stuck: int = 0  # processes the watchdog reported (running, no live timer)


class ProcessManager:
    """One PM instance. `start()`, then `run_once()` in a loop (or `run(stop)`), then `close()`."""

    def __init__(
        self,
        config: Config,
        definitions: Sequence[ProcessDefinition[Any]] | None = None,
        *,
        app: App | None = None,
        max_active: int = 1000,
        rebuild: bool = False,
        verifier: Verifier | None = None,
        cache_size: int = 10_000,
        batch_size: int = 500,
        log: TextIO | None = None,
        timer_service: TimerService | None = None,
        anchor_timeout: float = 10.0,
        catch_up_timeout: float = 60.0,
    ) -> None:
        self.config = config
        self.app = app if app is not None else load_app(config.app or None)
        # The app rebuild workers load, by name: only an app loaded by name, and not with the workers off.
        self._rebuild_app = (
            app_spec(config.app or None)
            if app is None and definitions is None and config.rebuild_workers != 0
            else None
        )
        self.registry = Registry(definitions if definitions is not None else self.app.processes)
        # New processes open from these topics; those with backpressure pause above max_active.
        self._input_topics = self.app.input_topics
        self.rebuild = rebuild
        self.batch_size = batch_size
        self._log = log if log is not None else sys.stderr
        self.timers = timer_service or TimerService()
        # How long to wait for the journal record a store last folded before calling the store foreign:
        # brokers answer a fetch past the end with an error (Kafka) or with silence (Tansu).
        self.anchor_timeout = anchor_timeout
        self.catch_up_timeout = catch_up_timeout
        self.stats = RuntimeStats()
        self.stores: dict[int, PartitionStore] = {}
        self._cache = ProcessCache(cache_size)
        self._backpressure = Backpressure(
            frozenset(config.topic(t) for t in self.app.backpressure_topics), max_active, self._log
        )
        # Outputs of journal entries met during catch-up, by input position (see InputHandler._reemit).
        self._unconfirmed = UnconfirmedOutputs()
        # Decision times of inputs whose transaction aborted, for their retry (see RetryTimes).
        self._retry_times = RetryTimes()
        self._inputs = InputHandler(
            config,
            self.registry,
            self.stores,
            self._cache,
            self._unconfirmed,
            self._retry_times,
            self._backpressure,
            verifier=verifier,
            log=self._log,
        )
        self._journal_topic_id: str | None = None
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._static_partitions: list[int] | None = None  # PM_PARTITIONS, resolved by start()
        self._warm: WorkerFolds | None = None  # rebuild workers started ahead of the first assignment
        self.assignments = 0  # completed assignments (stores open and caught up): tests and demos wait on it

    # ------------------------------------------------------------ settings the parts hold (kept settable)

    @property
    def max_active(self) -> int:
        return self._backpressure.max_active

    @max_active.setter
    def max_active(self, value: int) -> None:
        self._backpressure.max_active = value

    @property
    def cache_size(self) -> int:
        return self._cache.size

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        self._cache.size = value

    @property
    def log(self) -> TextIO:
        return self._log

    @log.setter
    def log(self, value: TextIO) -> None:
        self._log = self._backpressure.log = self._inputs.log = value

    @property
    def verifier(self) -> Verifier | None:
        return self._inputs.verifier

    @verifier.setter
    def verifier(self, value: Verifier | None) -> None:
        self._inputs.verifier = value

    # ------------------------------------------------------------ lifecycle

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise PmError("process manager not started")
        return self._producer

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise PmError("process manager not started")
        return self._consumer

    @property
    def transactional_id(self) -> str:
        if self.config.partitions:
            # Static partitions: the ID names the partition set (not its spelling: "all", "0-5" and
            # "0-2,3-5" are one set), so whichever instance takes them next fences this one (the
            # group cannot do it: there is none).
            if self._static_partitions is None:
                raise PmError("process manager not started: its partitions are not known yet")
            return f"pm-{self.config.topic_prefix}partitions-{_ranges(self._static_partitions)}"
        return f"pm-{self.config.topic_prefix}{self.config.instance_id}"

    @property
    def group_id(self) -> str:
        return f"{self.config.topic_prefix}pm"

    def start(self) -> None:
        layout = load_layout(app=self.app)
        problems = check_topics(self.config, layout)
        if problems:
            raise PmError("the topics do not fit the process manager:\n  " + "\n  ".join(problems))
        # The partition count records are checked against (record_problem): topics.yaml's, which
        # check_topics just verified the broker has. Not live metadata: partitions an operator adds
        # later move keys (hash mod n changes) while the stores and journal stay placed by the old
        # count, so records routed by the new count must be refused, not decided on a foreign store.
        self._inputs.partitions = {
            self.config.topic(t): layout.spec(t).partitions for t in self._input_topics
        }
        self._journal_topic_id = journal_topic_id(self.config)
        self._static_partitions = self.config.static_partitions(min(self._inputs.partitions.values()))
        # The producer first: init_transactions fences and aborts what a previous run of this
        # instance left open, which would otherwise hold read_committed (and our catch-up) back.
        self._producer = make_transactional_producer(self.config, "pm", self.transactional_id)
        self._consumer = make_consumer(
            self.config,
            "pm",
            self.group_id,
            **{
                "group.instance.id": self.config.instance_id,
                # Catch-up (a full rebuild, on a new store) runs inside the assignment callback, without
                # polling; give it time before the group decides this member is stuck.
                "max.poll.interval.ms": 1_800_000,
                # librdkafka's own statistics carry the per-partition lag (see _on_stats).
                "statistics.interval.ms": 15_000,
                "stats_cb": self._on_stats,
                # While a batch is decided and committed, a partition that already holds this many
                # fetched records is left out of the next fetches (checked again every 10 ms): under
                # load fewer, smaller fetches (the broker's CPU per process -10 to -30 % in four
                # alternating pairs, bench/RESULTS.md session 14); unloaded, one hop's records (a
                # fan-in's results share a partition) stay below it, so no hop waits. librdkafka's
                # default (100,000) never leaves one out.
                "queued.min.messages": PREFETCHED_PER_PARTITION,
                "fetch.queue.backoff.ms": 10,
            },
        )
        topics = [self.config.topic(t) for t in self._input_topics]
        static = self._static_partitions
        self._warm = self._warm_workers(
            static if static is not None else list(range(min(self._inputs.partitions.values())))
        )
        if static is None:
            self.consumer.subscribe(
                topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            return
        # No group join (on Tansu a join and a sync take ~3 s each, even for a static member coming
        # back): fetch from the committed offsets of exactly these partitions. Nothing is polled before
        # the stores are open (below), and assigning first lets the backpressure pause apply at once.
        assigned = [TopicPartition(topic, p) for topic in topics for p in static]
        self.consumer.assign(assigned)
        self._on_assign(self.consumer, assigned)

    def close(self) -> None:
        """Leave the group (stores closed by the revoke) and release everything."""
        if self._warm is not None:  # never assigned: the workers started for a rebuild are not needed
            self._warm.close()
            self._warm = None
        if self._consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self._consumer.close()
            self._consumer = None
        self._close_stores(list(self.stores))
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def run(self, stop: threading.Event, poll_timeout: float = 0.2) -> None:
        while not stop.is_set():
            self.run_once(poll_timeout)

    # ------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._inputs.forget(sorted({tp.partition for tp in partitions}))  # positions start afresh
        self._backpressure.assign(consumer, partitions)
        self.timers.reset()
        wanted = sorted({tp.partition for tp in partitions})
        self._open_stores([p for p in wanted if p not in self.stores])
        self._backpressure.check(self.consumer)
        self.assignments += 1

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = sorted({tp.partition for tp in partitions})
        self._close_stores(revoked)
        self._cache.clear()
        self.timers.reset()
        # Only the revoked partitions: a kept partition's aborted batch is still to be retried.
        self._retry_times.forget(revoked)
        self._inputs.isolation.forget(revoked)
        self._inputs.forget(revoked)
        self._backpressure.revoke(revoked)

    def _close_stores(self, partitions: Iterable[int]) -> None:
        for partition in list(partitions):
            store = self.stores.pop(partition, None)
            self._backpressure.active.pop(partition, None)
            if store is not None:
                store.close()
            self.timers.drop(partition)

    def _open_stores(self, partitions: list[int]) -> None:
        """Open each partition's store, caught up to the end of its journal partition (`PartitionRecovery`).

        One after the other, but the next partition is prepared (store opened, its journal fetch
        started) before this one's catch-up: its first records arrive while this one folds. Large missing
        stores are shared with worker processes first (`pm.runtime.rebuild`): they fold theirs while the
        PM folds its own, then the PM opens theirs like any other (caught up from their anchor).
        """
        started = time.monotonic()
        workers = self._worker_folds(partitions)
        mine = [p for p in partitions if workers is None or p not in workers.partitions]
        recoveries: list[PartitionRecovery] = []
        results: dict[int, WorkerResult] = {}
        try:
            recoveries += [self._recovery(partition) for partition in mine]
            self._catch_up(recoveries)
            own_done = time.monotonic()
            if workers is not None:
                patience = max(self.catch_up_timeout, WORKER_PATIENCE * (own_done - started))
                results = workers.results(timeout=patience)
                for result in results.values():
                    self._log.write(result.log)
                    self._unconfirmed.absorb(result.outputs)
                workers_done = time.monotonic()
                recoveries += [self._recovery(partition) for partition in workers.partitions]
                # Their catch-ups read little (only what came after the workers' last window) but each waits
                # for its first batch (~150 ms on the local broker): all fetching at once.
                self._catch_up(recoveries[len(mine) :], ahead=MAX_WORKERS)
        finally:
            if workers is not None:
                workers.close()
            for recovery in recoveries:
                recovery.close()  # those prepared and never opened (an error stopped the loop)
        if workers is not None:
            by_pm = [r for r in recoveries if r.from_scratch]
            by_workers = sum(r.entries for r in results.values())
            print(
                f"pm: rebuilt {len(by_pm) + len(results)} partitions, {len(results)} in worker processes: "
                f"{sum(r.folded for r in by_pm) + by_workers} journal entries ({by_workers} by the workers) "
                f"in {time.monotonic() - started:.1f}s (the PM's share {own_done - started:.1f}s, then waiting "
                f"for the workers {workers_done - own_done:.1f}s, opening their stores "
                f"{time.monotonic() - workers_done:.1f}s)",
                file=self._log,
                flush=True,
            )

    def _catch_up(self, recoveries: list[PartitionRecovery], ahead: int = 1) -> None:
        """Open each in turn; `ahead` partitions after it prepared meanwhile (their journal fetch started)."""
        for index, recovery in enumerate(recoveries):
            for upcoming in recoveries[index : index + 1 + ahead]:
                upcoming.prepare()
            store = recovery.open()
            self.stores[recovery.partition] = store
            self.timers.load(recovery.partition, store)  # its due timers in memory from now on
            self._backpressure.active[recovery.partition] = store.active

    def _worker_folds(self, partitions: list[int]) -> WorkerFolds | None:
        """Worker processes folding a share of the large partitions without a store yet; None if not worth it."""
        warm, self._warm = self._warm, None  # started by `start` (a state dir without stores), used once
        if self._rebuild_app is None:
            return None
        # Only stores not there at all (a file check: a restart on its stores pays nothing more); one
        # left half folded by a killed rebuild is caught up by the PM from its anchor.
        missing = [p for p in partitions if not PartitionStore.exists(store_path(self.config, p))]
        count = 0
        if worker_count(len(missing), self.config.rebuild_workers) > 0:  # else no watermarks asked for
            large = [p for p in missing if self._journal_records(p) >= WORKER_MIN_RECORDS]
            count = worker_count(len(large), self.config.rebuild_workers)
            if warm is not None:
                count = min(count, warm.size)
        if count == 0:
            if warm is not None:
                warm.close()
            return None
        jobs = [
            WorkerJob(
                self.config,
                partition,
                self._journal_topic_id,
                self.rebuild,
                self.anchor_timeout,
                self.catch_up_timeout,
            )
            # The PM keeps one share of count + 1 (it folds while the workers start); the workers the rest.
            for index, partition in enumerate(large)
            if index % (count + 1)
        ]
        workers = warm if warm is not None else WorkerFolds(count, self._rebuild_app)
        try:
            workers.submit(jobs, count)
        except BaseException:
            workers.close()
            raise
        return workers

    def _warm_workers(self, partitions: list[int]) -> WorkerFolds | None:
        """Rebuild workers started before the assignment when no partition has a store (a new machine, a
        lost state dir): their imports (~1 s) overlap the group join; `_worker_folds` gives them jobs."""
        if self._rebuild_app is None:
            return None
        if any(PartitionStore.exists(store_path(self.config, p)) for p in partitions):
            return None
        count = worker_count(len(partitions), self.config.rebuild_workers)
        if count == 0 or not any(self._journal_records(p) >= WORKER_MIN_RECORDS for p in partitions):
            return None  # a new deployment (a short journal): nothing worth a worker
        return WorkerFolds(count, self._rebuild_app)

    def _journal_records(self, partition: int) -> int:
        """About how many records the journal partition holds (its watermarks; 0 when unknown)."""
        try:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.config.topic(JOURNAL_TOPIC), partition), timeout=10
            )
        except KafkaException:
            return 0
        return max(0, high - max(low, 0))

    def _recovery(self, partition: int) -> PartitionRecovery:
        return PartitionRecovery(
            self.config,
            self.registry,
            self.consumer,
            partition,
            journal_topic_id=self._journal_topic_id,
            rebuild=self.rebuild,
            anchor_timeout=self.anchor_timeout,
            catch_up_timeout=self.catch_up_timeout,
            unconfirmed=self._unconfirmed,
            log=self.log,
        )

    # ------------------------------------------------------------ the batch

    def _next_batch(self, timeout: float) -> list[Message]:
        """Up to `batch_size` records: wait at most `timeout` for the first, then take what is already fetched.

        `consume(n, timeout)` waits the whole timeout whenever fewer than n records are there, which
        added up to `timeout` (p50 ~190 ms in bench e2e) to every decision under light load.
        """
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=0)
        if messages:
            return messages
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        if self.batch_size <= 1:
            return [first]
        return [first, *self.consumer.consume(num_messages=self.batch_size - 1, timeout=0)]

    def run_once(self, timeout: float = 0.2) -> int:
        """Consume one batch and commit it in one transaction; returns the number of inputs journaled."""
        # A rebalance can run inside the fetch calls: records of a partition revoked meanwhile are not
        # ours any more (no store; their offsets are uncommitted, so the new owner fetches them).
        messages = self._limit(
            [m for m in self._next_batch(timeout) if m.error() is not None or m.partition() in self.stores]
        )
        due = self.timers.due(self.stores) if self.stores else []  # re-checked against the batch below
        if not messages and not due:
            if self._backpressure.paused:
                self._backpressure.check(self.consumer)
            return 0
        checkpoint = Checkpoint(
            self.producer,
            self.consumer,
            now=self.timers.now(),
            transactional_id=self.transactional_id,
            log=self.log,
        )
        batch = checkpoint.batch
        for message in messages:
            if message.error() is None:
                batch.fetched.setdefault(
                    (str(message.topic()), int(message.partition() or 0)), int(message.offset() or 0)
                )
        try:
            # 1. one transaction for the whole batch
            checkpoint.begin()
            for message in messages:
                self._inputs.handle(checkpoint, message)
            for partition, timer in due:
                change = batch.changes.get(timer.correlation_id)
                if change is not None and timer.timer_id not in change.after.timers:
                    continue  # cancelled (or the process ended) by an input of this very batch
                self._fire(checkpoint, partition, timer)
            # 2. everything delivered; the journal offsets are now known
            checkpoint.flush()
            # 3. the input offsets become part of the transaction
            checkpoint.send_offsets()
            # 4. commit: outputs and input offsets visible together
            self._commit()
        except KafkaException as exc:
            checkpoint.abort(exc)  # FencedError when this instance can no longer commit
            self._inputs.expected.update(checkpoint.rewind(self._retry_times))
            self.stats.aborts += 1
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            self._inputs.isolation.after_abort(batch.inputs, batch.failed_inputs, error)
            return 0
        except BaseException:
            checkpoint.abandon()
            self._inputs.expected.update(checkpoint.rewind(self._retry_times))
            raise
        # 5. the store, after the commit (a crash before this is repaired by catch-up)
        self._apply(checkpoint)
        self._inputs.isolation.after_commit(batch.inputs)
        return batch.handled

    def _limit(self, messages: list[Message]) -> list[Message]:
        """While a poison input is searched for (`pm.runtime.poison`), take fewer; put the rest back."""
        limit = self._inputs.isolation.limit
        if limit is None or len(messages) <= limit:
            return messages
        kept, rest = messages[:limit], messages[limit:]
        first_rest: dict[tuple[str, int], int] = {}
        for message in rest:
            if message.error() is None:
                first_rest.setdefault(
                    (str(message.topic()), int(message.partition() or 0)), int(message.offset() or 0)
                )
        for (topic, partition), offset in first_rest.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
            self._inputs.expected[(topic, partition)] = offset
        return kept

    def _commit(self) -> None:
        """Step 4 of `run_once` (a method of its own: tests make one commit fail here)."""
        commit_transaction(self.producer)

    def _fire(self, checkpoint: Checkpoint, partition: int, timer: TimerEntry) -> None:
        event = fired_event(timer)
        checkpoint.produce(
            self.config.topic(TIMERS_TOPIC),
            encode(event),
            key=timer.correlation_id,
            # The store's partition, which is partition_for(correlation ID): a process is only created
            # from a record that passed record_problem there, so the TimerFired passes it too.
            partition=partition,
            headers=telemetry.inject([]),
            on_delivery=checkpoint.batch.on_delivery,
        )
        checkpoint.batch.fired.append(timer)

    def _apply(self, checkpoint: Checkpoint) -> None:
        """Step 5: the committed batch goes to the stores and the cache; stats and backpressure follow."""
        self._backpressure.active.update(checkpoint.apply(self.stores, self._cache, self.timers))
        batch = checkpoint.batch
        self._inputs.expected.update(batch.put_back())
        self._watch(batch.changes)
        self.stats.batches += 1
        self.stats.handled += batch.handled
        self.stats.duplicates += batch.duplicates
        self.stats.reemitted += batch.reemitted
        self.stats.dlq += batch.dlq
        self.stats.timers_fired += len(batch.fired)
        self.stats.deferred += len(batch.deferred)
        self._backpressure.check(self.consumer, force_pause=bool(batch.deferred))

    def _watch(self, changes: Mapping[str, Change]) -> None:
        """The watchdog: a process that is running with no live timer waits for something that may never come.

        Checked on every committed change (a dict lookup per process: see bench/RESULTS.md for its
        cost); reported once per transition, as a log line and the `pm.processes.stuck` gauge.
        """
        for correlation_id, change in changes.items():
            now_stuck = stuck(change.after)
            was_stuck = change.before is not None and stuck(change.before)
            if now_stuck == was_stuck:
                continue
            telemetry.stuck_processes().add(1 if now_stuck else -1)
            if now_stuck:
                self.stats.stuck += 1
                print(
                    f"pm: process {shown(correlation_id)} is stuck: running with no live timer and no pending "
                    f"approval (`pm processes --stuck`; `pm resume` or `pm escalate` it)",
                    file=self.log,
                    flush=True,
                )

    # ------------------------------------------------------------ backpressure

    def active_count(self) -> int:
        """Processes with status running on this instance (waiting for a human does not count)."""
        return self._backpressure.count()

    @property
    def paused(self) -> list[TopicPartition]:
        return list(self._backpressure.paused)

    # ------------------------------------------------------------ telemetry

    def _on_stats(self, stats_json: str) -> None:
        """Consumer lag per input partition, from librdkafka's statistics (wrong on Tansu: tansu.md)."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        gauge = telemetry.consumer_lag()
        for physical, topic in stats.get("topics", {}).items():
            for partition, info in topic.get("partitions", {}).items():
                lag = info.get("consumer_lag", -1)
                if partition != "-1" and isinstance(lag, int) and lag >= 0:
                    gauge.set(
                        lag,
                        {
                            "messaging.destination.name": self.config.logical_topic(physical),
                            "messaging.destination.partition.id": partition,
                        },
                    )


def _ranges(numbers: list[int]) -> str:
    """Sorted partition numbers as ranges: [0, 1, 2, 5] -> "0-2_5"."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return "_".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
