"""`pm emit NAME --file events.jsonl`: publish to an app's start topic as an upstream system would.

NAME is a start topic of the app or its alias (StartTopic.alias).
Each non-blank line is one JSON object that the start topic's `parse` function turns into an
event (see the app's README for its fields). Valid lines are produced
keyed by their correlation ID; after every line has been read, the command waits for the broker
and prints one line per event: `line N: CORRELATION_ID -> TOPIC[PARTITION]@OFFSET`. A bad line
(not UTF-8 JSON, or refused by `parse`, e.g. a spoofed sender) is reported on stderr with its
number and reason and also produced to `pm.dlq` as a DlqRecord (source: the topic, partition -1,
offset = the line number, value = the line), so it is not lost; the others are still published,
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from pm import telemetry
from pm.app import StartTopic, load_app
from pm.client import Delivery, DeliveryError, Publisher, RecordTooLarge
from pm.config import Config
from pm.dlq import DLQ_TOPIC, dead_letter
from pm.errors import PmError
from pm.events import derive_id

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    emit = subparsers.add_parser(
        "emit",
        parents=[common],
        help="publish JSON lines to a start topic of the app (`pm emit NAME --file events.jsonl`)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    emit.add_argument("name", metavar="NAME", help="a start topic of the app, or its alias")
    emit.add_argument("--file", "-f", required=True, help="JSON-lines file, one event per line; '-' for stdin")
    emit.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)"
    )
    emit.set_defaults(handler=_emit)


FAILED_BY = "pm emit"
DEAD_LETTER_VALUE_BYTES = 64 * 1024


@contextmanager
def _open(name: str) -> Iterator[TextIO]:
    # surrogateescape: a line that is not UTF-8 becomes one bad line (dead-lettered with its
    # original bytes), not a traceback that loses the rest of the file.
    if name == "-":
        stdin = sys.stdin
        if isinstance(stdin, io.TextIOWrapper):
            stdin.reconfigure(encoding="utf-8", errors="surrogateescape")  # JSON is UTF-8
        yield stdin
        return
    try:
        with Path(name).open(encoding="utf-8", errors="surrogateescape") as handle:
            yield handle
    except OSError as exc:
        raise PmError(f"cannot read {name}: {exc.strerror or exc}") from exc


Callback = Callable[[Delivery | DeliveryError], None]


def _submit(
    publisher: Publisher, start: StartTopic, line: str, callback: Callback
) -> tuple[str, str] | None:
    """Produce the event on `line`; None when submitted, else the bad line's (error type, reason)."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:  # surrogate-escaped bytes: the line was not UTF-8
        return "InvalidJson", f"not JSON: not UTF-8 (column {exc.start + 1})"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return "InvalidJson", f"not JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return "InvalidJson", "not JSON: nested too deeply"
    try:
        event = start.parser()(data)
    except ValueError as exc:  # InvalidInput and pydantic's ValidationError among them
        return type(exc).__name__, str(exc)
    try:
        publisher.submit_event(event, callback, topic=start.name)
    except RecordTooLarge as exc:
        return "RecordTooLarge", str(exc)
    return None


def _dead_letter(
    publisher: Publisher,
    topic: str,
    number: int,
    line: str,
    reason: str,
    error_type: str,
    callback: Callback,
) -> None:
    """The bad line to `pm.dlq`: source the start topic, partition -1, offset = line number."""
    value = line.removesuffix("\n").encode("utf-8", "surrogateescape")  # the bytes as read
    if len(value) > DEAD_LETTER_VALUE_BYTES:  # the dead letter must fit in a record itself
        reason = f"{reason} (line of {len(value)} bytes cut to {DEAD_LETTER_VALUE_BYTES} in the dead letter)"
        value = value[:DEAD_LETTER_VALUE_BYTES]
    record, headers = dead_letter(
        topic,
        -1,
        number,
        None,
        value,
        reason=reason,
        error_type=error_type,
        failed_by=FAILED_BY,
        now=datetime.now(UTC),
    )
    # Line N of every file shares the source position: the line's bytes make the event ID unique.
    record = record.model_copy(update={"event_id": derive_id("dlq", FAILED_BY, number, value.hex())})
    publisher.submit_event(record, callback, headers=headers)
    telemetry.dlq_records().add(1, {"messaging.destination.name": topic, "error.type": error_type})


def _emit(args: argparse.Namespace, config: Config) -> int:
    start = load_app(config.app or None).start_topic(args.name)
    start.parser()  # a topic without a parse function fails before any line is read
    results: dict[int, Delivery | DeliveryError] = {}
    dead: dict[int, Delivery | DeliveryError] = {}
    bad = 0
    publisher = Publisher(config)
    with _open(args.file) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            problem = _submit(publisher, start, line, functools.partial(results.__setitem__, number))
            if problem is not None:
                bad += 1
                error_type, reason = problem
                print(f"line {number}: {reason}", file=sys.stderr)
                _dead_letter(
                    publisher,
                    start.name,
                    number,
                    line,
                    reason,
                    error_type,
                    functools.partial(dead.__setitem__, number),
                )
    pending = publisher.flush(args.timeout)
    failed = 0
    for number in sorted(results):
        result = results[number]
        if isinstance(result, DeliveryError):
            failed += 1
            print(f"line {number}: {result}", file=sys.stderr)
        else:
            print(
                f"line {number}: {result.correlation_id} -> {result.topic}[{result.partition}]@{result.offset}"
            )
    dead_lettered = 0
    for number in sorted(dead):
        result = dead[number]
        if isinstance(result, DeliveryError):
            failed += 1
            print(f"line {number}: dead letter {result}", file=sys.stderr)
        else:
            dead_lettered += 1
            where = f"{result.topic}[{result.partition}]@{result.offset}"
            print(f"line {number}: dead-lettered -> {where}", file=sys.stderr)
    if pending:
        print(f"{pending} record(s) not acknowledged within {args.timeout:g} s", file=sys.stderr)
    published = sum(isinstance(r, Delivery) for r in results.values())
    print(
        f"{published} published, {bad} bad line(s) ({dead_lettered} to {config.topic(DLQ_TOPIC)}), "
        f"{failed + pending} not delivered",
        file=sys.stderr,
    )
    return 1 if bad or failed or pending else 0
