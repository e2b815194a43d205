"""Run one process manager instance in the foreground: signals, start and stop messages (`pm run pm`)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pm.app import App
from pm.config import Config
from pm.journal import Verifier
from pm.process import ProcessDefinition
from pm.runtime.manager import ProcessManager, RuntimeStats


def run_process_manager(
    config: Config,
    *,
    max_active: int = 1000,
    rebuild: bool = False,
    stop: threading.Event | None = None,
    definitions: Sequence[ProcessDefinition[Any]] | None = None,
    app: App | None = None,
    verifier: Verifier | None = None,
    log: TextIO | None = None,
    on_started: Callable[[ProcessManager], None] | None = None,
    **options: Any,
) -> RuntimeStats:
    """Run one PM instance until `stop` is set or SIGTERM/SIGINT arrives (main thread only).

    `options` go to `ProcessManager` (cache_size, batch_size, anchor_timeout, ...).
    """
    stop = stop or threading.Event()
    if verifier is None:
        try:
            from pm.approvals import ApprovalVerifier

            verifier = ApprovalVerifier(config)
        except ImportError:
            verifier = None
    manager = ProcessManager(
        config,
        definitions,
        app=app,
        max_active=max_active,
        rebuild=rebuild,
        verifier=verifier,
        log=log,
        **options,
    )
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        manager.start()
        print(
            f"pm: process manager {config.instance_id} running (group {manager.group_id}, "
            f"transactional.id {manager.transactional_id}, max active {max_active})",
            file=manager.log,
            flush=True,
        )
        if on_started is not None:
            on_started(manager)
        manager.run(stop)
    finally:
        manager.close()
        s = manager.stats
        print(
            f"pm: stopped after {s.batches} batches: {s.handled} inputs journaled, {s.duplicates} duplicates "
            f"({s.reemitted} outputs re-emitted), "
            f"{s.dlq} to the DLQ, {s.timers_fired} timers fired, {s.aborts} aborted transactions",
            file=manager.log,
            flush=True,
        )
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return manager.stats
