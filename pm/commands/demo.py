"""`pm demo`: the app's demo (`App.demo`) on the embedded broker, end to end, with checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from pm.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = subparsers.add_parser(
        "demo", parents=[common], help="run the app's demo end to end (the bundled app's by default)"
    )
    demo.add_argument(
        "--interactive", action="store_true", help="wait for you to approve with `pm approvals`"
    )
    demo.add_argument("--workdir", type=Path, default=None, help="keep state, logs and what the demo writes here")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, config: Config) -> int:
    from pm.app import AppError, load_app, resolve  # imports the whole stack; keep `pm --help` fast

    app = load_app(config.app or None)
    if app.demo is None:
        raise AppError(f"app {app.name!r} declares no demo (App(..., demo='module:run_demo'))")
    run_demo = resolve(app.demo) if isinstance(app.demo, str) else app.demo
    return int(run_demo(config, interactive=args.interactive, workdir=args.workdir))
