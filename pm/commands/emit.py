"""`pm emit email --file F`: placeholder module, filled in by the upstream-producer work."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    return None
