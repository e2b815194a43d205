"""Smoke test of the benchmarks: the raw pipe and pm-throughput at tiny sizes, and the report format."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import BENCHMARKS, pm_throughput
from bench.command import register
from bench.common import Result, report
from bench.cpu import CpuMeter, cpu_seconds
from pm.config import Config
from pm.errors import PmError


def _last_json(out: str) -> dict[str, object]:
    line = out.strip().splitlines()[-1]
    data = json.loads(line)
    assert isinstance(data, dict)
    return data


def test_every_benchmark_module_has_run() -> None:
    assert {"pipe", "pm-throughput", "e2e", "rebuild", "recovery", "memory"} <= set(BENCHMARKS)
    for module in BENCHMARKS.values():
        assert callable(importlib.import_module(module).run)


def test_report_prints_table_then_json(capsys: pytest.CaptureFixture[str]) -> None:
    report([("alpha", "1"), ("beta", "2")], Result("x", 50.0, "msg/s", baseline=200.0, extra={"n": 3}))
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("alpha")
    assert _last_json(out) == {
        "name": "x",
        "value": 50.0,
        "unit": "msg/s",
        "baseline": 200.0,
        "ratio": 0.25,
        "n": 3,
    }
    report([], Result("y", 1.0, "s"))
    assert _last_json(capsys.readouterr().out)["ratio"] is None


def test_unknown_benchmark_is_a_user_error() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["bench", "no-such-bench"])
    with pytest.raises(PmError, match="unknown benchmark"):
        args.handler(args, Config())


def test_pm_throughput_small(capsys: pytest.CaptureFixture[str]) -> None:
    """200 processes through the in-process PM, and 2,000 messages through the raw pipe, on a fresh broker."""
    result = pm_throughput.run(True, processes=200)
    data = _last_json(capsys.readouterr().out)
    assert data["name"] == "pm-throughput" and data["unit"] == "events/s"
    assert data["processes"] == 200
    assert isinstance(data["value"], float) and data["value"] > 0
    assert isinstance(data["baseline"], float) and data["baseline"] > 0
    assert data["ratio"] == result.ratio and 0 < float(result.ratio or 0) < 10
    assert float(str(data["emails_per_s"])) > 0
    assert data["commands_per_s"] == pytest.approx(2 * float(str(data["value"])), rel=0.01)


_SPINNER_PARENT = """
import subprocess, sys
busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print(busy.pid, flush=True)
busy.wait()
print("reaped", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs procfs")
def test_cpu_seconds_counts_a_busy_descendant_and_keeps_it_once_reaped() -> None:
    """An idle parent whose child spins: the tree's CPU grows, the parent's own does not, and
    the child's time stays in the tree (the parent's cutime) after the parent reaps it."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _SPINNER_PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdin is not None and parent.stdout is not None
    busy: int | None = None
    try:
        busy = int(parent.stdout.readline())
        meter = CpuMeter({"tree": [parent.pid], "parent only": [parent.pid]}, own_only=["parent only"])
        first = meter.snapshot()
        deadline = time.monotonic() + 30
        while cpu_seconds(busy, include_children_tree=False) < first.seconds["tree"] + 0.3:
            assert time.monotonic() < deadline, "the spinning child got no CPU in 30 s"
            time.sleep(0.05)
        grown = meter.snapshot() - first
        assert grown.wall > 0
        assert grown.seconds["tree"] >= 0.2
        assert grown.seconds["parent only"] < 0.1
        before_reap = cpu_seconds(parent.pid)
        os.kill(busy, signal.SIGKILL)
        assert parent.stdout.readline().strip() == "reaped"
        busy = None
        assert cpu_seconds(parent.pid) >= before_reap  # moved to the parent's cutime, not lost
        assert cpu_seconds(parent.pid, include_children_tree=False) < before_reap
    finally:
        if busy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(busy, signal.SIGKILL)
        parent.stdin.close()
        parent.wait(10)
    with pytest.raises(ProcessLookupError):
        cpu_seconds(parent.pid)
