"""`pm demo`: the whole product on the embedded broker, end to end, with checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from pm.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = subparsers.add_parser(
        "demo", parents=[common], help="run the seed's customer e-mail end to end (starts its own broker)"
    )
    demo.add_argument(
        "--interactive", action="store_true", help="wait for you to approve with `pm approvals`"
    )
    demo.add_argument("--workdir", type=Path, default=None, help="keep state, maildir and logs here")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, config: Config) -> int:
    from pm.demo import run_demo  # imports the whole stack; keep `pm --help` fast

    return run_demo(config, interactive=args.interactive, workdir=args.workdir)
