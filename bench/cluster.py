"""Child processes and journal watching for the subprocess benchmarks (e2e, recovery, memory).

Every component runs as the command a user deploys (`python -m pm run ...`), with the
configuration in its environment, as `pm demo` does. Each child is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, TopicPartition

from pm.codec import decode
from pm.config import Config
from pm.events import JournalEntry
from pm.journal import JOURNAL_TOPIC
from pm.kafka import make_consumer
from pm.topics import load_layout

__all__ = ["Child", "child_env", "pm_argv", "JournalTail", "JournalRow", "rss_kib", "percentile"]


def pm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pm", *args]


def child_env(config: Config, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PM_BOOTSTRAP": config.resolved_bootstrap,
        "PM_STATE_DIR": str(config.state_dir),
        "PM_TOPIC_PREFIX": config.topic_prefix,
        "PM_FETCH_WAIT_MAX_MS": str(config.fetch_wait_max_ms or 10),
        "PM_ORDER_SERVICE_URL": config.order_service_url,
        "PM_SMTP_HOST": config.smtp_host,
        "PM_SMTP_PORT": str(config.smtp_port),
    }
    env.update(extra)
    return env


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> Child:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class JournalRow:
    correlation_id: str
    status: str
    input_type: str
    written_ms: int  # the journal record's timestamp (set when the PM produced it)
    input_ms: int  # the input event's occurred_at
    commands: int


@dataclass
class JournalTail:
    """Reads pm.journal from the start as it grows (no consumer group, all partitions)."""

    config: Config
    decode_inputs: bool = True
    _consumer: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        topic = self.config.topic(JOURNAL_TOPIC)
        partitions = load_layout().spec(JOURNAL_TOPIC).partitions
        consumer = make_consumer(self.config, "bench-watch", f"{self.config.topic_prefix}bench-watch")
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._consumer = consumer

    def poll(self, timeout: float = 0.2) -> Iterator[JournalRow]:
        consumer = self._consumer
        for msg in consumer.consume(2000, timeout=timeout):  # type: ignore[attr-defined]
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading the journal: {error}")
                continue
            entry = decode(msg.value())
            assert isinstance(entry, JournalEntry)
            input_type, input_ms = "", 0
            if self.decode_inputs:
                event = decode(entry.payload.event)
                input_type, input_ms = event.type, int(event.occurred_at.timestamp() * 1000)
            yield JournalRow(
                entry.correlation_id,
                entry.payload.status,
                input_type,
                int(msg.timestamp()[1]),
                input_ms,
                len(entry.payload.commands),
            )

    def close(self) -> None:
        self._consumer.close()  # type: ignore[attr-defined]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def wait_until(check: object, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
