"""`pm topics apply|check|list`: the layout of topics.yaml on the broker."""

from __future__ import annotations

import argparse
from pathlib import Path

from pm.app import load_app
from pm.config import Config
from pm.topics import apply_topics, check_topics, load_layout

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    topics = subparsers.add_parser("topics", help="create and verify the topics of topics.yaml")
    actions = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("apply", _apply, "create the topics that are missing (idempotent)"),
        ("check", _check, "verify partition counts and co-partitioning; exit 1 on a mismatch"),
        ("list", _list, "print the layout with physical names"),
    ):
        sub = actions.add_parser(name, parents=[common], help=text)
        sub.add_argument(
            "--file", type=Path, default=None, help="topics file (default: the repo's topics.yaml)"
        )
        sub.set_defaults(handler=handler)


def _apply(args: argparse.Namespace, config: Config) -> int:
    layout = load_layout(args.file, app=load_app(config.app or None))
    created = apply_topics(config, layout)
    for name in created:
        print(f"created {name}")
    print(f"{len(created)} created, {len(layout.topics) - len(created)} already present")
    problems = check_topics(config, layout)
    for problem in problems:
        print(f"mismatch: {problem}")
    return 1 if problems else 0


def _check(args: argparse.Namespace, config: Config) -> int:
    layout = load_layout(args.file, app=load_app(config.app or None))
    problems = check_topics(config, layout)
    for problem in problems:
        print(f"mismatch: {problem}")
    if not problems:
        print(f"ok: {len(layout.topics)} topics match topics.yaml; PM inputs and journal co-partitioned")
    return 1 if problems else 0


def _list(args: argparse.Namespace, config: Config) -> int:
    layout = load_layout(args.file, app=load_app(config.app or None))
    for spec in layout.topics.values():
        settings = " ".join(f"{k}={v}" for k, v in spec.config.items())
        print(
            f"{config.topic(spec.name):40} partitions={spec.partitions} rf={spec.replication_factor} {settings}"
        )
    return 0
