"""`pm emit email --file emails.jsonl`: publish upstream e-mails as an upstream system would.

Each non-blank line is one JSON object with the EmailReceived fields: `message_id`,
`sender`, `recipient`, `subject`, `body`, optional `thread_id`, `order_id`, `labels`,
and `received_at` (ISO-8601; the time of publishing when absent). Valid lines are
produced to `email.received` keyed by the correlation ID (thread ID, else message ID);
after every line has been read, the command waits for the broker and prints one line
per e-mail: `line N: CORRELATION_ID -> TOPIC[PARTITION]@OFFSET`. A bad line is reported
on stderr with its number and reason, the others are still published, and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from pm.client import Delivery, DeliveryError, EmailPublisher, InvalidEmail
from pm.config import Config
from pm.errors import PmError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    emit = subparsers.add_parser("emit", help="publish upstream events (e-mails) to their topics")
    kinds = emit.add_subparsers(dest="kind", required=True, metavar="KIND")
    email = kinds.add_parser(
        "email",
        parents=[common],
        help="publish e-mails from a JSON-lines file to email.received",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    email.add_argument(
        "--file", "-f", required=True, help="JSON-lines file, one e-mail per line; '-' for stdin"
    )
    email.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)"
    )
    email.set_defaults(handler=_emit_email)


@contextmanager
def _open(name: str) -> Iterator[TextIO]:
    if name == "-":
        yield sys.stdin
        return
    try:
        with Path(name).open(encoding="utf-8") as handle:
            yield handle
    except OSError as exc:
        raise PmError(f"cannot read {name}: {exc.strerror or exc}") from exc


def _emit_email(args: argparse.Namespace, config: Config) -> int:
    results: dict[int, Delivery | DeliveryError] = {}
    bad = 0
    publisher = EmailPublisher(config)
    with _open(args.file) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                publisher.submit(data, functools.partial(results.__setitem__, number))
            except json.JSONDecodeError as exc:
                bad += 1
                print(f"line {number}: not JSON: {exc.msg} (column {exc.colno})", file=sys.stderr)
            except InvalidEmail as exc:
                bad += 1
                print(f"line {number}: invalid e-mail: {exc}", file=sys.stderr)
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
    if pending:
        print(f"{pending} e-mail(s) not acknowledged within {args.timeout:g} s", file=sys.stderr)
    total = len(results) - failed
    print(f"{total} published, {bad} bad line(s), {failed + pending} not delivered", file=sys.stderr)
    return 1 if bad or failed or pending else 0
