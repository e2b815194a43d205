"""`pm-throughput`: PM inputs per second on a pre-loaded backlog, against `pipe` on the same broker.

The PM runs in-process (`pm.runtime.ProcessManager`, one instance, all partitions,
the real `customer-email` definition). Two backlogs, each fully pre-loaded before
the PM that consumes it starts:

1. N `EmailReceived` -> each a decision with one `ClassifyEmail` command;
2. N `EmailClassified` (the offline classifier's answers to exactly those commands)
   -> each a decision with two commands (`FetchOrder` + `FetchRefundPolicy`).

The figure is phase 2 (step results, the PM's steady diet); phase 1 is in the table.
Time runs from the end of the PM's first batch (one record: it waits out the group join
and store catch-up) to the last input journaled. `baseline` is `measure_pipe` with the same
message count, run first on the same broker under another topic prefix.

Sizes: N = 20,000 processes (quick: 2,000). `profile=True` wraps phase 2 in cProfile.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import TopicPartition

from bench.common import Result, bench_broker, report
from bench.pipe import measure_pipe
from bench.scenario import Scenario, produce_all
from pm.config import Config
from pm.events import Event
from pm.kafka import make_consumer
from pm.runtime import ProcessManager
from pm.topics import apply_topics, load_layout

__all__ = ["run", "measure_pm", "PhaseResult"]


@dataclass(frozen=True)
class PhaseResult:
    inputs: int
    seconds: float
    commands: int
    aborts: int = 0  # transactions aborted and retried (the broker refused a commit)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


def _drain(config: Config, expected: int, *, profile: cProfile.Profile | None = None) -> PhaseResult:
    """Start a PM, run it until `expected` more inputs are journaled; time all but the first batch."""
    manager = ProcessManager(config, max_active=10**9, log=io.StringIO(), verifier=lambda _e: None)
    batch_size = manager.batch_size
    manager.batch_size = 1  # the batch that waits out the group join and catch-up: one record, untimed
    manager.start()
    try:
        deadline = time.monotonic() + 600
        first = 0
        while first == 0:
            first = manager.run_once(0.5)
            if time.monotonic() > deadline:
                raise RuntimeError("the PM handled nothing within 600 s")
        manager.batch_size = batch_size
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        handled = first
        while handled < expected and time.monotonic() < deadline:
            handled += manager.run_once(0.2)
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - started
        if handled < expected:
            raise RuntimeError(f"the PM journaled {handled} of {expected} inputs within 600 s")
        if manager.stats.dlq or manager.stats.duplicates:
            raise RuntimeError(f"unexpected DLQ records or duplicates: {manager.stats}")
        return PhaseResult(handled - first, elapsed, 0, manager.stats.aborts)
    finally:
        manager.close()


def _distinct_keys(config: Config, topic: str) -> int:
    partitions = load_layout().spec(config.logical_topic(topic)).partitions
    consumer = make_consumer(
        config, "bench-count", f"{config.topic_prefix}bench-count", **{"enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    pending: set[int] = set(range(partitions))
    keys: set[bytes] = set()
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error() is not None:
                pending.discard(int(msg.partition() or 0))
                continue
            keys.add(msg.key() or b"")
    consumer.close()
    return len(keys)


def measure_pm(
    config: Config, processes: int, *, profile: cProfile.Profile | None = None
) -> tuple[PhaseResult, PhaseResult]:
    """Phase 1 (e-mails) and phase 2 (classifications) on topics already created for `config`."""
    scenario = Scenario(config, uuid.uuid4().hex[:6])
    emails = [scenario.email(i) for i in range(processes)]
    produce_all(config, list(emails))
    received = _drain(config, processes)
    now = datetime.now(UTC)
    results: list[Event] = [scenario.answer(scenario.first_command(e), now) for e in emails]
    produce_all(config, results)
    classified = _drain(config, processes, profile=profile)
    # Every classification must have become a decision with commands: count one of them. Distinct
    # keys, not records: a broker that shows aborted records to read_committed readers (Tansu) can
    # show a retried batch's commands twice; step consumers dedupe them by command ID.
    fetches = _distinct_keys(config, config.topic("cmd.fetch-order"))
    if fetches != processes:
        raise RuntimeError(f"{processes} classifications gave FetchOrder commands for {fetches} processes")
    return (
        PhaseResult(received.inputs, received.seconds, received.inputs, received.aborts),
        PhaseResult(classified.inputs, classified.seconds, 2 * classified.inputs, classified.aborts),
    )


def run(quick: bool, *, processes: int | None = None, profile_to: str | None = None) -> Result:
    n = processes or (2_000 if quick else 20_000)
    profile = cProfile.Profile() if profile_to else None
    with bench_broker() as config:
        pipe_config = config.with_overrides(topic_prefix=f"p{uuid.uuid4().hex[:8]}.")
        apply_topics(pipe_config)
        pipe = measure_pipe(pipe_config, max(n, 2_000))
        phase1, phase2 = measure_pm(config, n, profile=profile)
    if profile is not None and profile_to:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(40)
        with open(profile_to, "w") as fh:
            fh.write(out.getvalue())
    result = Result(
        "pm-throughput",
        phase2.rate,
        "events/s",
        baseline=pipe,
        extra={
            "processes": n,
            "emails_per_s": round(phase1.rate, 1),
            "commands_per_s": round(phase2.rate * 2, 1),
            "aborted_transactions": phase1.aborts + phase2.aborts,
        },
    )
    report(
        [
            ("processes", f"{n:,}"),
            ("pipe (baseline)", f"{pipe:,.0f} msg/s"),
            (
                "phase 1 EmailReceived",
                f"{phase1.rate:,.0f} events/s ({phase1.inputs:,} in {phase1.seconds:.1f}s)",
            ),
            (
                "phase 2 EmailClassified",
                f"{phase2.rate:,.0f} events/s ({phase2.inputs:,} in {phase2.seconds:.1f}s, 2 commands each)",
            ),
            ("ratio to pipe", f"{result.ratio}"),
        ],
        result,
    )
    return result
