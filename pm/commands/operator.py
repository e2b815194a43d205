"""`pm quarantine list|release`, `pm resume`, `pm escalate`: operators' commands on one process.

Each publishes an `OperatorCommand` to `pm.operator`; the PM decides it and journals the
outcome like any input (`pm inspect ID` shows it). The command only says it was published.
"""

from __future__ import annotations

import argparse
import json

from pm.commands.processes import list_processes, print_rows
from pm.config import Config
from pm.operator import send_operator_command

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    quarantine = subparsers.add_parser(
        "quarantine", help="processes whose input kept a batch from committing: list, release"
    )
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="quarantined processes (local stores)")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of text")
    listing.set_defaults(handler=_list)
    release = _operator_parser(actions, "release", common, "decide the parked inputs again (after a fix)")
    release.set_defaults(handler=_send, operator_action="release")

    resume = _operator_parser(
        subparsers, "resume", common, "ask a stuck process for its outstanding work again"
    )
    resume.set_defaults(handler=_send, operator_action="resume")
    escalate = _operator_parser(
        subparsers, "escalate", common, "end a process as escalated: a human takes over"
    )
    escalate.set_defaults(handler=_send, operator_action="escalate")


def _operator_parser(
    subparsers: argparse._SubParsersAction, name: str, common: argparse.ArgumentParser, text: str
) -> argparse.ArgumentParser:
    sub = subparsers.add_parser(name, parents=[common], help=text)
    sub.add_argument("correlation_id", metavar="ID", help="the process's correlation ID")
    sub.add_argument("--note", default="", help="why (kept in the journal)")
    sub.add_argument("--operator", default=None, help="who (default: the login name)")
    return sub


def _list(args: argparse.Namespace, config: Config) -> int:
    rows = list_processes(config, "quarantined")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_rows(config, rows)
    return 0


def _send(args: argparse.Namespace, config: Config) -> int:
    delivery = send_operator_command(
        config, args.correlation_id, args.operator_action, operator=args.operator, note=args.note
    )
    print(
        f"{args.operator_action} of {args.correlation_id} published "
        f"({delivery.topic}/{delivery.partition}/{delivery.offset}); `pm inspect {args.correlation_id}` "
        "shows what the process manager made of it"
    )
    return 0
