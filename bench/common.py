"""What every benchmark shares: its own broker, a report format, a payload of PM-event size."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pm.broker import free_port, launch
from pm.config import Config
from pm.topics import apply_topics

__all__ = ["bench_broker", "bench_broker_pid", "Result", "report"]

_RUNNING: dict[str, int] = {}  # bootstrap -> PID of the brokers bench_broker runs now


@contextlib.contextmanager
def bench_broker() -> Iterator[Config]:
    """A fresh local broker (stopped afterwards) with every topic of topics.yaml created."""
    with tempfile.TemporaryDirectory(prefix="pm-bench-") as tmp:
        broker = launch(free_port(), Path(tmp) / "broker.log")
        _RUNNING[broker.bootstrap] = broker.pid
        try:
            config = Config(
                bootstrap=broker.bootstrap,
                topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
                state_dir=Path(tmp) / "state",
                # Tansu answers a waiting fetch only when the wait expires: this trades idle broker CPU
                # (~75 ms/s per consumer at 10 ms, 17 at 100) for latency per hop. On 2 shared cores
                # 50 ms wins on CPU, rate and latency alike (RESULTS.md); PM_BENCH_FETCH_WAIT_MS to compare.
                fetch_wait_max_ms=int(os.environ.get("PM_BENCH_FETCH_WAIT_MS", "50")),
            )
            apply_topics(config)
            yield config
        finally:
            _RUNNING.pop(broker.bootstrap, None)
            broker.stop()


def bench_broker_pid(config: Config) -> int | None:
    """The PID of the broker `bench_broker` started for `config` (None: not one of ours, e.g. external)."""
    return _RUNNING.get(config.bootstrap)


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    extra: dict[str, object] | None = None

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else round(self.value / self.baseline, 3)


def report(rows: Sequence[tuple[str, str]], result: Result) -> None:
    """A readable table, then the machine-readable JSON object as the last line."""
    width = max(len(k) for k, _ in rows) if rows else 0
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(
        json.dumps(
            {
                "name": result.name,
                "value": round(result.value, 3),
                "unit": result.unit,
                "baseline": None if result.baseline is None else round(result.baseline, 3),
                "ratio": result.ratio,
                **(result.extra or {}),
            }
        )
    )
