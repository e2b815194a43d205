"""Smoke test of the benchmarks: the raw pipe and pm-throughput at tiny sizes, and the report format."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest

from bench import BENCHMARKS, pm_throughput
from bench.command import register
from bench.common import Result, report
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
