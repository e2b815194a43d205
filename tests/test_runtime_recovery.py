"""Crash and scale-out: kill -9 of the PM mid-batch, and PM instances joining a running group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from test_runtime_support import (
    PmThread,
    classified,
    email,
    expected_states,
    publish,
    read_topic,
    sent,
    wait_until,
)

from pm.codec import decode
from pm.config import Config
from pm.events import Event
from pm.journal import iter_journal
from pm.store import PartitionStore, list_store_paths

TESTS = Path(__file__).resolve().parent

PM_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from pm.config import load_config
from pm.runtime import run_process_manager
from test_runtime_support import MINI
stats = run_process_manager(
    load_config(), definitions=[MINI], verifier=lambda e: None,
    on_started=lambda m: print("started", flush=True), batch_size=int(sys.argv[2]),
)
print("stopped", stats, flush=True)
"""


def records(configs: list[Config]) -> dict[str, dict[str, Any]]:
    """The newest record of every process across instances' stores (a moved partition leaves an older copy)."""
    newest: dict[str, dict[str, Any]] = {}
    for config in configs:
        for partition, path in list_store_paths(config):
            store = PartitionStore(path, partition, read_only=True)
            try:
                for cid, data in store.records():
                    if cid not in newest or data["journal_offset"] > newest[cid]["journal_offset"]:
                        newest[cid] = data
            finally:
                store.close()
    return newest


def stage_count(configs: list[Config], stage: str) -> int:
    return sum(1 for data in records(configs).values() if data["state"]["stage"] == stage)


class PmProcess:
    """The PM as a real OS process, so it can be killed with SIGKILL."""

    def __init__(self, config: Config, tmp: Path, batch_size: int = 500) -> None:
        env = {
            **os.environ,
            "PM_BOOTSTRAP": config.bootstrap,
            "PM_TOPIC_PREFIX": config.topic_prefix,
            "PM_STATE_DIR": str(config.state_dir),
            "PM_INSTANCE_ID": config.instance_id,
            "PM_FETCH_WAIT_MAX_MS": "10",
            "PM_PARTITIONS": config.partitions,  # empty: group-assigned
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PM_SCRIPT, str(TESTS), str(batch_size)],
            env=env,
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "started", line

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0
        return out


def check_journal(config: Config, inputs: list[Event]) -> None:
    """Exactly one journal entry per distinct input, with the outcomes an uninterrupted run has."""
    entries = list(iter_journal(config, idle_timeout=10))
    counts = Counter(r.event.event_id for r in entries)
    assert counts.most_common(1)[0][1] == 1, f"journaled twice: {counts.most_common(3)}"
    assert set(counts) == {e.event_id for e in inputs}
    assert all(r.entry.payload.outcome == "applied" for r in entries)


def kill_through_waves(config: Config, tmp_path: Path, tag: str, n: int) -> tuple[PmProcess, list[Event]]:
    """Three waves of n inputs (e-mail, classified, sent); kill -9 the PM mid-wave each time and restart it.

    Returns the PM running after the last wave (every process done) and every input published.
    """
    cids = [f"<{tag}{i}@mail.example>" for i in range(n)]
    inputs: list[Event] = []
    pm = PmProcess(config, tmp_path, batch_size=20)  # small batches: the kill lands inside the wave
    wait_until(lambda: len(list_store_paths(config)) == 6)
    for stage_events, stage in (
        ([email(c) for c in cids], "classifying"),
        ([classified(c) for c in cids], "sending"),
        ([sent(c) for c in cids], "done"),
    ):
        inputs += stage_events
        publish(config, stage_events)
        # Kill it while it is working through this wave, then restart under the same instance ID.
        wait_until(lambda stage=stage: stage_count([config], stage) >= n // 4, timeout=30, interval=0.02)
        pm.kill()
        done_at_kill = stage_count([config], stage)
        pm = PmProcess(config, tmp_path, batch_size=20)
        wait_until(lambda stage=stage: stage_count([config], stage) == n, timeout=60)
        assert done_at_kill < n, "the kill came too late to be mid-run"
    return pm, inputs


def test_kill_minus_9_mid_batch_then_restart_loses_and_duplicates_nothing(
    topics: Config, tmp_path: Path
) -> None:
    config = topics
    n = 600
    started = time.monotonic()
    pm, inputs = kill_through_waves(config, tmp_path, "k", n)
    out = pm.stop()
    assert "stopped" in out
    elapsed = time.monotonic() - started

    final = {cid: (d["status"], d["state"]["stage"]) for cid, d in records([config]).items()}
    assert final == expected_states(inputs)
    check_journal(config, inputs)
    # Commands may repeat on brokers that show aborted records, but never with a new command ID.
    commands = [decode(m.value()) for m in read_topic(config, "cmd.send-email")]
    assert len({c.event_id for c in commands}) == n
    print(f"\nkill -9 run: {len(inputs)} inputs in {elapsed:.1f}s including 3 restarts")


def test_two_instances_share_partitions_and_a_third_joins_mid_run(topics: Config, tmp_path: Path) -> None:
    config = topics
    configs = [replace(config, instance_id=f"pm-{i}", state_dir=tmp_path / f"pm-{i}") for i in range(3)]
    n = 60
    cids = [f"<s{i}@mail.example>" for i in range(n)]
    with PmThread(configs[0]) as first, PmThread(configs[1]) as second:
        publish(config, [email(c) for c in cids])
        wait_until(lambda: stage_count(configs, "classifying") == n, timeout=30)
        with PmThread(configs[2]) as third:
            publish(config, [classified(c) for c in cids])
            wait_until(lambda: stage_count(configs, "sending") == n, timeout=30)
            publish(config, [sent(c) for c in cids])
            wait_until(lambda: stage_count(configs, "done") == n, timeout=30)
            managers = [pm.manager for pm in (first, second, third)]
            assert all(m is not None and m.stores for m in managers), "every instance owns partitions"
            owned = [set(m.stores) for m in managers if m is not None]
            assert sorted(p for s in owned for p in s) == list(range(6))  # each partition exactly once
            handled = sum(m.stats.handled for m in managers if m is not None)
    inputs = [email(c) for c in cids] + [classified(c) for c in cids] + [sent(c) for c in cids]
    assert handled == 3 * n
    check_journal(config, inputs)
    assert {cid: d["status"] for cid, d in records(configs).items()} == {c: "sent" for c in cids}
