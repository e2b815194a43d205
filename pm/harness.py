"""What the demo, the benchmarks and the fault harness share to run `pm` as a user deploys it.

Each component is a child process started with the same `pm run ...` command a user runs,
configured through its environment, and stopped by its PID. `JournalTail` follows
`pm.journal` from the start (all partitions, no consumer group) to watch processes advance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pm.codec import CodecError, decode
from pm.config import Config
from pm.events import Event, JournalEntry
from pm.kafka import make_consumer
from pm.topics import load_layout

__all__ = ["Child", "child_env", "pm_argv", "workspace", "JournalRow", "JournalTail"]

_JOURNAL = "pm.journal"


def pm_argv(*args: str) -> list[str]:
    """`pm ARGS...` run with this interpreter (works in a venv without the script on PATH)."""
    return [sys.executable, "-m", "pm", *args]


def child_env(config: Config, **extra: str) -> dict[str, str]:
    """The environment that gives a child process exactly this configuration."""
    env = {
        **os.environ,
        # The app's settings, as the environment carries them (PM_<NAME>); the core's below win.
        **{f"PM_{name.upper()}": value for name, value in config.settings.items()},
        "PM_BOOTSTRAP": config.resolved_bootstrap,
        "PM_STATE_DIR": str(config.state_dir),
        "PM_TOPIC_PREFIX": config.topic_prefix,
        "PM_FETCH_WAIT_MAX_MS": str(config.fetch_wait_ms),
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def workspace(keep: Path | None, prefix: str) -> Iterator[Path]:
    """`keep` (created, left in place) or a temporary directory removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@dataclass
class Child:
    """One component as a child process, its output in `log`."""

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
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal exactly this PID; SIGKILL when it has not exited within `timeout`."""
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
    """One journal record as a watcher sees it."""

    entry: JournalEntry
    input: Event | None  # the recorded input event (None when not decoded)
    written_ms: int  # the journal record's timestamp (when the PM produced it)

    @property
    def correlation_id(self) -> str:
        return self.entry.correlation_id

    @property
    def status(self) -> str:
        return self.entry.payload.status

    @property
    def input_type(self) -> str:
        return self.input.type if self.input is not None else ""

    @property
    def input_ms(self) -> int:
        return int(self.input.occurred_at.timestamp() * 1000) if self.input is not None else 0

    @property
    def commands(self) -> int:
        return len(self.entry.payload.commands)

    def command_steps(self) -> list[str]:
        return [decode(c).topic.removeprefix("cmd.") for c in self.entry.payload.commands]


class JournalTail:
    """Reads pm.journal from the start as it grows; undecodable records are skipped."""

    def __init__(self, config: Config, role: str, *, decode_inputs: bool = True) -> None:
        topic = config.topic(_JOURNAL)
        partitions = load_layout().spec(_JOURNAL).partitions
        self.decode_inputs = decode_inputs
        self._consumer: Consumer = make_consumer(config, role, f"{config.topic_prefix}{role}")
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll(self, timeout: float = 0.2, max_records: int = 2000) -> Iterator[JournalRow]:
        for msg in self._consumer.consume(max_records, timeout=timeout):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading the journal: {error}")
                continue
            try:
                entry = decode(msg.value() or b"")
                if not isinstance(entry, JournalEntry):
                    continue
                event = decode(entry.payload.event) if self.decode_inputs else None
            except CodecError:
                continue
            yield JournalRow(entry, event, int(msg.timestamp()[1]))

    def close(self) -> None:
        self._consumer.close()
