"""`pm run all`: run the PM and every step consumer as child processes, restart crashes, stop them all.

Each child is an ordinary `pm run ...` command (the same a deployment would run), started
with `sys.executable -m pm` and the supervisor's configuration flags. A child that exits
while the supervisor is running is restarted after an exponential backoff (reset once it
has stayed up for `stable_after` seconds), except after exit status 2 (`pm`'s permanent
error: bad configuration, a store that does not match the journal): restarting cannot help,
so it stays down and the supervisor says what to do. On stop (Ctrl-C / SIGTERM) every child gets
SIGTERM by PID, then SIGKILL after `stop_grace` seconds. Every action is printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["ChildSpec", "Supervisor", "PERMANENT_EXIT"]

PERMANENT_EXIT = 2  # `pm` exits 2 on a PmError: the same start would fail the same way


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive short-lived runs
    restart_at: float = 0.0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)
    given_up: bool = False  # exited with a permanent error: not restarted


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        stop_grace: float = 15.0,
        out: Callable[[str], None] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self.children = [_Child(spec) for spec in specs]
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self._out = out or (lambda line: print(line, flush=True))

    def say(self, line: str) -> None:
        self._out(f"supervisor: {line}")

    def run(self, stop: threading.Event) -> int:
        """Supervise until `stop` is set; returns 0 after every child has been stopped."""
        try:
            while not stop.is_set():
                now = time.monotonic()
                for child in self.children:
                    self._tend(child, now)
                stop.wait(0.1)
        finally:
            self.stop_all()
        return 0

    def _tend(self, child: _Child, now: float) -> None:
        if child.given_up:
            return
        process = child.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            lived = now - child.started_at
            if code == PERMANENT_EXIT:
                child.given_up = True
                child.process = None
                self.say(
                    f"{child.spec.name} (pid {process.pid}) exited with {code}, a permanent error (its message "
                    f"is above): not restarting it. Fix the cause and start `pm run all` again (a store that "
                    "does not match the journal: `pm run all --rebuild`)"
                )
                return
            child.failures = 0 if lived >= self.stable_after else child.failures + 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, child.failures - 1))
            child.restart_at = now + delay
            child.process = None
            self.say(
                f"{child.spec.name} (pid {process.pid}) exited with {code} after {lived:.1f} s; restarting in {delay:.1f} s"
            )
            return
        if now < child.restart_at:
            return
        child.process = subprocess.Popen(list(child.spec.argv))
        child.started_at = now
        child.pids.append(child.process.pid)
        if len(child.pids) > 1:
            child.restarts += 1
            self.say(f"restarted {child.spec.name} (pid {child.process.pid}, restart #{child.restarts})")
        else:
            self.say(f"started {child.spec.name} (pid {child.process.pid}): {' '.join(child.spec.argv[1:])}")

    def stop_all(self) -> None:
        """SIGTERM every running child by PID, wait up to `stop_grace`, SIGKILL whatever is left."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            self.say(f"stopping {child.spec.name} (pid {child.process.pid}): SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(
                    f"{child.spec.name} (pid {child.process.pid}) did not stop in {self.stop_grace:.0f} s: SIGKILL"
                )
                child.process.kill()
                child.process.wait()
            self.say(f"stopped {child.spec.name} (pid {child.process.pid}, exit {child.process.returncode})")
        for child in self.children:
            child.process = None
        self.say("all children stopped")
