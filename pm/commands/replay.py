"""`pm replay` and `pm inspect`: read `pm.journal` (only Kafka) and explain a process, or all of them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from pm.config import Config
from pm.errors import PmError
from pm.replay import (
    ProcessReplay,
    ReplayStep,
    Until,
    VerifyReport,
    WhatIfReport,
    deployed_registry,
    inspect_process,
    journal_size_estimate,
    load_definition,
    replay_process,
    verify_all,
    what_if,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    replay = subparsers.add_parser(
        "replay",
        parents=[common],
        help="fold a process's journal and show each event, state change and decision",
        description=(
            "Replay pm.journal with the process definitions (no store, no model or service calls). "
            "`--verify` fails (exit 1) when today's decide differs from what was recorded; "
            "`--definition` reports what another definition would have done."
        ),
    )
    replay.add_argument("correlation_id", nargs="?", metavar="CORRELATION_ID")
    replay.add_argument("--all", action="store_true", help="every process in the journal")
    replay.add_argument("--json", action="store_true", help="JSON lines (one per event, then the state)")
    replay.add_argument(
        "--until",
        metavar="OFFSET|TIME|EVENT_ID",
        help="stop there (inclusive) and show the state; a TIME is compared with when the PM decided each entry",
    )
    replay.add_argument("--verify", action="store_true", help="re-run decide and compare with the journal")
    replay.add_argument(
        "--definition", metavar="MODULE:NAME", help="what-if: replay against this process definition"
    )
    replay.set_defaults(handler=_replay)

    inspect = subparsers.add_parser(
        "inspect", parents=[common], help="a process's state and timeline, from the journal"
    )
    inspect.add_argument("correlation_id", metavar="CORRELATION_ID")
    inspect.add_argument(
        "--json", action="store_true", help="one JSON object (correlation_id, status, events)"
    )
    inspect.set_defaults(handler=_inspect)


class UsageError(PmError):
    pass


# ---------------------------------------------------------------- pm replay


def _replay(args: argparse.Namespace, config: Config) -> int:
    if args.all == bool(args.correlation_id):
        raise UsageError("give a CORRELATION_ID or --all (not both)")
    definition = load_definition(args.definition) if args.definition else None
    if args.all:
        if args.until:
            raise UsageError("--until applies to one process, not --all")
        if definition is not None:
            report = what_if(config, definition, label=args.definition, progress=_progress_bar(config))
            return _print_what_if(report, args.json)
        if not args.verify:
            raise UsageError("--all needs --verify or --definition MODULE:NAME")
        return _print_verify(verify_all(config, progress=_progress_bar(config)), args.json)
    if definition is not None and not args.verify:
        return _print_what_if(
            what_if(config, definition, correlation_id=args.correlation_id, label=args.definition), args.json
        )
    until = Until.parse(args.until) if args.until else None
    result = replay_process(
        config,
        args.correlation_id,
        deployed_registry(config),
        verify=args.verify,
        until=until,
        definition=definition,
    )
    if args.json:
        for step in result.steps:
            print(json.dumps(step.to_json()))
        print(json.dumps(result.state_json()))
    else:
        _print_replay(result, sys.stdout)
    if args.verify:
        differences = result.differences
        if differences:
            print(
                f"verify: {len(differences)} difference(s) in {result.checked} decisions re-run "
                "(nondeterminism or a change that is not replay-compatible)",
                file=sys.stderr,
            )
            return 1
        print(f"verify: ok, {result.checked} decisions re-run, all as recorded", file=sys.stderr)
    return 0


def _value(value: Any, width: int = 100) -> str:
    text = json.dumps(value, default=str)  # ASCII: hostile text cannot steer the terminal
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_step(step: ReplayStep, out: TextIO) -> None:
    head = f"@{step.offset:<5} {step.occurred_at.isoformat()}  {step.event_type:<20} {step.event_id}"
    tail = f"{step.outcome}" + (f" ({step.reason})" if step.reason else "") + f" -> {step.status}"
    print(f"{head}  {tail}" + ("  [duplicate, skipped]" if step.duplicate else ""), file=out)
    waited = (step.decided_at - step.occurred_at).total_seconds()
    if waited >= 1:  # sat in Kafka before the PM got to it (backpressure, an outage): timers count from here
        print(f"    decided at {step.decided_at.isoformat()} ({waited:.1f}s after it occurred)", file=out)
    for name, (before, after) in step.changes.items():
        print(f"    {name}: {_value(before)} -> {_value(after)}", file=out)
    for command in step.commands:
        step_name = getattr(type(command), "STEP", None)
        attempt = getattr(command.payload, "attempt", None)
        where = f" step={step_name} attempt={attempt}" if step_name is not None else ""
        print(f"    command {command.type}{where} id={command.event_id}", file=out)
    for event in step.published:
        print(f"    publish {event.type} id={event.event_id}", file=out)
    for timer in step.timers_scheduled:
        print(f"    timer {timer.name} due {timer.due_at.isoformat()} id={timer.timer_id}", file=out)
    for timer_id in step.timers_cancelled:
        print(f"    cancel timer {timer_id}", file=out)
    for diff in step.differences:
        print(f"    DIFF {diff.field}:", file=out)
        for line in diff.lines:
            print(f"      {line}", file=out)


def _print_replay(result: ProcessReplay, out: TextIO) -> None:
    print(f"process {result.process} v{result.version}  correlation ID {result.correlation_id}", file=out)
    for step in result.steps:
        _print_step(step, out)
    where = f" at {result.until.describe()}" if result.until else ""
    print(f"state{where} (status {result.status}):", file=out)
    state = result.state.model_dump(mode="json") if result.state is not None else {}
    for name, value in state.items():
        print(f"    {name}: {_value(value)}", file=out)


# ---------------------------------------------------------------- --all


def _progress_bar(config: Config, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A bar on stderr when it is a terminal; the total is a watermark estimate, the end is real EOF."""
    out = stream or sys.stderr
    if not out.isatty():
        return lambda read, processes: None
    total = journal_size_estimate(config)
    last = [0.0]

    def draw(read: int, processes: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.1:
            return
        last[0] = now
        if total:
            done = min(read / total, 1.0)
            bar = "#" * int(done * 30)
            print(f"\r[{bar:<30}] {done:4.0%} {read} entries, {processes} processes", end="", file=out)
        else:
            print(f"\r{read} entries, {processes} processes", end="", file=out)
        out.flush()

    return draw


def _end_progress() -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)


def _print_verify(report: VerifyReport, as_json: bool) -> int:
    _end_progress()
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        for cid, diffs in report.differing.items():
            print(f"DIFFERS {cid}")
            for diff in diffs:
                print(f"  @{diff.offset} {diff.event_type} {diff.event_id} {diff.field}:")
                for line in diff.lines:
                    print(f"    {line}")
        for cid, error in report.errors.items():
            print(f"ERROR   {cid}: {error}")
        print(
            f"checked {report.processes} processes, {report.events} events ({report.checked} decisions re-run): "
            f"{len(report.differing)} differ, {len(report.errors)} could not be replayed"
        )
    return 0 if report.ok else 1


def _print_what_if(report: WhatIfReport, as_json: bool) -> int:
    _end_progress()
    if as_json:
        print(json.dumps(report.to_json()))
        return 0
    print(f"what-if {report.definition}: {report.processes} processes, {report.events} events replayed")
    for r in report.results:
        print(f"{r.correlation_id}:")
        if r.terminal_changed:
            why = f" ({r.new_reason})" if r.new_reason else ""
            print(f"    terminal state: {r.recorded_status} -> {r.new_status}{why}")
        if r.route_changed:
            at = r.first_divergence or 0
            print(f"    route differs from step {at + 1}:")
            print(f"      recorded: {' > '.join(r.recorded_route[at:]) or '(nothing)'}")
            print(f"      new:      {' > '.join(r.new_route[at:]) or '(nothing)'}")
        if r.steps_added:
            print(f"    now runs: {', '.join(r.steps_added)}")
        if r.steps_removed:
            print(f"    no longer runs: {', '.join(r.steps_removed)}")
    for cid, error in report.errors.items():
        print(f"{cid}: could not be replayed: {error}")
    print("summary:")
    print(f"    processes differing: {len(report.results)} of {report.processes}")
    print(f"    different route: {report.route_changed}")
    changed = report.terminal_changed
    print(f"    different terminal state: {sum(changed.values())}")
    for (old, new), n in sorted(changed.items(), key=str):
        print(f"        {old} -> {new}: {n}")
    for step, n in sorted(report.steps_added.items()):
        print(f"    step now run: {step}: {n}")
    for step, n in sorted(report.steps_removed.items()):
        print(f"    step no longer run: {step}: {n}")
    if report.skipped:
        print(f"    processes of other definitions skipped: {report.skipped}")
    return 0


# ---------------------------------------------------------------- pm inspect


def _inspect(args: argparse.Namespace, config: Config) -> int:
    data = inspect_process(config, args.correlation_id)
    if args.json:
        print(json.dumps(data))
        return 0
    print(f"{data['correlation_id']}: {data['status']}" + (f" ({data['reason']})" if data["reason"] else ""))
    print(f"process {data['process']} v{data['version']}, journal partition {data['journal_partition']}")
    for row in data["events"]:
        if row["kind"] == "input":
            extra = (
                f"{row['outcome']}"
                + (f" ({row['reason']})" if row["reason"] else "")
                + f" -> {row['status']}"
            )
            print(f"@{row['offset']:<5} {row['occurred_at']}  {row['type']:<20} {row['event_id']}  {extra}")
        elif row["kind"] in ("command", "published"):
            where = f" step={row['step']} attempt={row['attempt']}" if "step" in row else ""
            print(f"        {row['kind']} {row['type']}{where} {row['event_id']}")
        elif row["type"] == "TimerScheduled":
            print(f"        timer {row['name']} due {row['due_at']} {row['event_id']}")
        else:
            print(f"        cancel timer {row['event_id']}")
    if data["state"] is not None:
        print("state:")
        for name, value in data["state"].items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                # A list of records (a conversation, a history): one line each, not one cut line.
                print(f"    {name}: {len(value)}")
                for item in value:
                    print(f"      - {_value(item, 200)}")
            else:
                print(f"    {name}: {_value(value)}")
    elif data["state_note"]:
        print(f"state: not folded ({data['state_note']})")
    return 0
