"""`pm broker start|stop|status`: the local in-memory broker."""

from __future__ import annotations

import argparse

from pm.broker import broker_status, start_broker, stop_broker
from pm.config import DEFAULT_PORT, Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    broker = subparsers.add_parser("broker", help="run the local Tansu broker (memory only, 127.0.0.1)")
    actions = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", parents=[common], help="start it in the background")
    start.add_argument("--port", type=int, default=DEFAULT_PORT)
    start.set_defaults(handler=_start)
    actions.add_parser("stop", parents=[common], help="stop the broker `start` recorded").set_defaults(
        handler=_stop
    )
    actions.add_parser("status", parents=[common], help="is it running, and where").set_defaults(
        handler=_status
    )


def _start(args: argparse.Namespace, config: Config) -> int:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    broker = start_broker(config.state_dir, args.port)
    print(
        f"broker started: pid {broker.pid}, bootstrap {broker.bootstrap} (memory only; log {broker.log_file})"
    )
    print(broker.bootstrap)
    return 0


def _stop(args: argparse.Namespace, config: Config) -> int:
    stopped = stop_broker(config.state_dir)
    if stopped is None:
        print(f"no local broker recorded in {config.state_dir}")
        return 0
    print(f"broker stopped: pid {stopped.pid} ({stopped.bootstrap})")
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    running = broker_status(config.state_dir)
    if running is None:
        print("broker: not running")
        return 1
    print(f"broker: running, pid {running.pid}, bootstrap {running.bootstrap}")
    return 0
