"""Stopping a foreground component cleanly: SIGTERM and SIGINT set an event the component waits on."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["stop_on_signals"]


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (handlers install only on the main thread)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signum, lambda *_: stop.set())
    return stop
