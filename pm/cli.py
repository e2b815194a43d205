"""`pm`: one entry point; each concern registers its subcommands from `pm/commands/`."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from pathlib import Path

from pm.app import load_app
from pm.config import load_config
from pm.errors import PmError

__all__ = ["main", "COMMAND_MODULES", "PLUGIN_GROUP"]

PLUGIN_GROUP = "pm.commands"  # entry points: `register(subparsers, common)` of more commands

# Each module exposes `register(subparsers, common)`; order is the order in `pm --help`.
COMMAND_MODULES = (
    "pm.commands.broker",
    "pm.commands.topics",
    "pm.commands.schemas",
    "pm.commands.emit",
    "pm.commands.demo",
    "pm.commands.approvals",
    "pm.commands.run",
    "pm.commands.processes",
    "pm.commands.operator",
    "pm.commands.replay",
    "pm.commands.acls",
)


# Commands that run no app code (the local broker, the bundled demo, the benchmarks start their own).
_WITHOUT_APP = frozenset({"broker", "demo", "bench"})


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts; they override environment and config file."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (flags > PM_* environment > config file > defaults)")
    group.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (PM_BOOTSTRAP)")
    group.add_argument(
        "--prefix", dest="topic_prefix", default=None, help="topic name prefix (PM_TOPIC_PREFIX)"
    )
    group.add_argument(
        "--state-dir", type=Path, default=None, help="RocksDB stores and ledgers (PM_STATE_DIR)"
    )
    group.add_argument("--config", type=Path, default=None, help="config file (PM_CONFIG, else ./pm.yaml)")
    group.add_argument(
        "--app", default=None, help="the pm.App to run, module:attr (PM_APP; default: the bundled app)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pm", description="An event-sourced process manager on Kafka.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, common)
    # Commands of installed plugins (e.g. this repository's benchmarks): the core imports none by name.
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        entry.load()(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(
            config_file=args.config,
            bootstrap=args.bootstrap,
            topic_prefix=args.topic_prefix,
            state_dir=args.state_dir,
            app=getattr(args, "app", None),
        )
        if args.command not in _WITHOUT_APP:
            # The app's schema folder and upcasters must be known before anything is decoded.
            load_app(config.app or None)
        return int(args.handler(args, config) or 0)
    except PmError as exc:
        print(f"pm: error: {exc}", file=sys.stderr)
        # 2 means "starting again fails the same way" (the supervisor does not restart it); a
        # transient error (the broker slow during catch-up) exits 1 and is restarted.
        return 1 if getattr(exc, "transient", False) else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
