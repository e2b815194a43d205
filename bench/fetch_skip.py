"""Does the broker skip records for a tailing reader when several producers write one partition?

`python -m bench.fetch_skip [--producers 5] [--seconds 20]` starts a fresh local broker, creates the
topics, and has N producer processes (each like a step consumer: `make_producer`, idempotent, keyed
records) write `step.results` while one reader tails it like the PM does (`make_consumer`,
read_committed). Afterwards a fresh reader reads every partition from offset 0. Records in the log
that the tailing reader never received are reported (exit status 1): a reader that skips a record
of `step.results` never decides on that result, so its process waits for the step's timeout.

On the local broker (Tansu 0.6.0, in-memory storage) it does skip, a few batches per 200,000
records with 5 producers: `produce` assigns a batch its offsets (advances the watermark) before it
stores the batch, and `fetch` lists the stored batches below the watermark, so a batch still being
stored while a later one (another producer's) is already there is left out, and the reader's next
fetch starts past it. One writer per partition (the PM's commands) cannot hit this; several writers
per partition (step results, approvals, start topics) can. Apache Kafka appends a partition's
batches in offset order under a lock and serves reads only below the high watermark: no skip.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from pm.broker import free_port, launch
from pm.config import Config
from pm.kafka import make_consumer, make_producer
from pm.topics import apply_topics, load_layout

TOPIC = "step.results"


def _produce(config: Config, seed: int, seconds: float, counts: Any) -> None:
    """Keyed records in bursts, like a step consumer publishing results."""
    producer = make_producer(config, f"skip-producer-{seed}")
    rng = random.Random(seed)
    topic = config.topic(TOPIC)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(rng.randint(1, 30)):
            producer.produce(topic, key=uuid.uuid4().hex.encode(), value=b"r" * rng.randint(200, 3000))
            sent += 1
        producer.poll(0)
        time.sleep(rng.random() * 0.01)
    producer.flush(30)
    counts.put(sent)


def _read(config: Config, partitions: int, stop: Any, tail: bool) -> dict[int, set[int]]:
    """Offsets received per partition: tailing until `stop` and 5 s idle, or (not tail) all from 0."""
    consumer = make_consumer(
        config, "skip-reader", f"skip-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": not tail}
    )
    consumer.assign([TopicPartition(config.topic(TOPIC), p, 0) for p in range(partitions)])
    seen: dict[int, set[int]] = {p: set() for p in range(partitions)}
    at_end: set[int] = set()
    idle = time.monotonic()
    try:
        while True:
            for msg in consumer.consume(1000, 0.2):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(int(msg.partition() or 0))
                    continue
                seen[int(msg.partition() or 0)].add(int(msg.offset() or 0))
                idle = time.monotonic()
            if tail and stop.is_set() and time.monotonic() - idle > 5:
                return seen
            if not tail and len(at_end) == partitions:
                return seen
    finally:
        consumer.close()


def _tail(config: Config, partitions: int, stop: Any, out: Any) -> None:
    out.put(_read(config, partitions, stop, tail=True))


def run_once(producers: int, seconds: float) -> int:
    """One run on a fresh broker; returns the number of records the tailing reader skipped."""
    with tempfile.TemporaryDirectory(prefix="pm-fetch-skip-") as tmp:
        broker = launch(free_port(), Path(tmp) / "broker.log")
        try:
            config = Config(
                bootstrap=broker.bootstrap,
                topic_prefix=f"s{uuid.uuid4().hex[:8]}.",
                state_dir=Path(tmp) / "state",
                fetch_wait_max_ms=10,
            )
            apply_topics(config)
            partitions = load_layout().spec(TOPIC).partitions
            ctx = multiprocessing.get_context("spawn")
            stop, out, counts = ctx.Event(), ctx.Queue(), ctx.Queue()
            tail = ctx.Process(target=_tail, args=(config, partitions, stop, out))
            tail.start()
            time.sleep(1)
            writers = [
                ctx.Process(target=_produce, args=(config, i, seconds, counts)) for i in range(producers)
            ]
            for writer in writers:
                writer.start()
            sent = sum(counts.get() for _ in writers)
            for writer in writers:
                writer.join()
            stop.set()
            tailed: dict[int, set[int]] = out.get()
            tail.join()
            log = _read(config, partitions, stop, tail=False)
        finally:
            broker.stop()
    skipped = {p: sorted(log[p] - tailed[p]) for p in log if log[p] - tailed[p]}
    total = sum(len(v) for v in skipped.values())
    print(
        f"{producers} producers, {seconds:.0f} s: {sent:,} records produced, {sum(map(len, log.values())):,} in the log"
    )
    print(f"  the tailing reader skipped {total} records", end="")
    print(
        ": " + "; ".join(f"partition {p} offsets {v[0]}..{v[-1]} ({len(v)})" for p, v in skipped.items())
        if skipped
        else ""
    )
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--producers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    skipped = sum(run_once(args.producers, args.seconds) for _ in range(args.runs))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
