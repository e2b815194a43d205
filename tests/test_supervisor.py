"""`pm run all`: restarts a killed child, stops every child on SIGTERM (real child processes)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pm.broker import free_port
from pm.config import Config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a child reaped late still "exists"; check its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_restarts_killed_child_and_stops_all_on_sigterm(topics: Config) -> None:
    port = free_port()
    env = {**os.environ, "PM_ORDER_SERVICE_URL": f"http://127.0.0.1:{port}", "OTEL_SDK_DISABLED": "true"}
    argv = [sys.executable, "-m", "pm", "run", "all", "--only", "order-service,fetch-refund-policy"]
    argv += [
        "--bootstrap",
        topics.bootstrap,
        "--prefix",
        topics.topic_prefix,
        "--state-dir",
        str(topics.state_dir),
    ]
    supervisor = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in supervisor.stdout or []], daemon=True
    ).start()

    def expect(pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"supervisor never printed {pattern!r}")

    try:
        pids = {
            m.group(1): int(m.group(2)) for m in (expect(r"started (\S+) \(pid (\d+)\)") for _ in range(2))
        }
        assert set(pids) == {"order-service", "fetch-refund-policy"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
                break
            except httpx.TransportError:
                time.sleep(0.2)
        os.kill(pids["order-service"], signal.SIGKILL)
        expect(rf"order-service \(pid {pids['order-service']}\) exited with -9")
        new_pid = int(expect(r"restarted order-service \(pid (\d+)").group(1))
        assert new_pid != pids["order-service"]
        deadline = time.monotonic() + 15
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/orders/A-1001", timeout=1).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "restarted order service never answered"
                time.sleep(0.2)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        expect(r"all children stopped", timeout=5)
        assert not _alive(new_pid) and not _alive(pids["fetch-refund-policy"])
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_a_permanent_error_is_not_restarted_a_crash_is() -> None:
    from pm.supervisor import ChildSpec, Supervisor

    lines: list[str] = []
    stop = threading.Event()
    supervisor = Supervisor(
        [
            ChildSpec("broken", [sys.executable, "-c", "import sys; sys.exit(2)"]),
            ChildSpec("flaky", [sys.executable, "-c", "import sys; sys.exit(1)"]),
        ],
        backoff_base=0.05,
        backoff_max=0.05,
        out=lines.append,
    )
    runner = threading.Thread(target=supervisor.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            broken, flaky = supervisor.children
            if broken.given_up and flaky.restarts >= 3:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(10)
    broken, flaky = supervisor.children
    assert broken.given_up and len(broken.pids) == 1, lines  # started once, never again
    assert flaky.restarts >= 3 and not flaky.given_up
    assert any("permanent error" in line and "--rebuild" in line for line in lines)


def test_run_all_rebuild_reaches_the_pm_only() -> None:
    import argparse

    from pm.commands.run import child_specs

    args = argparse.Namespace(
        with_services=False, only=None, max_active=None, rebuild=True, concurrency=2, llm_latency_ms=None, config=None
    )
    specs = dict(child_specs(args, Config()))
    assert "--rebuild" in specs["pm"]
    assert all("--rebuild" not in argv for name, argv in specs.items() if name != "pm")


@pytest.mark.parametrize(("transient", "code"), [(True, 1), (False, 2)])
def test_transient_errors_exit_1_to_be_restarted_permanent_ones_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, transient: bool, code: int
) -> None:
    import pm.commands.processes as processes
    from pm.cli import main
    from pm.runtime.recovery import CatchUpError
    from pm.store import StoreError

    error = CatchUpError("journal stalled") if transient else StoreError("store from another journal")

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(processes, "list_processes", fail)
    assert main(["processes", "--state-dir", str(tmp_path)]) == code


def test_run_all_together_runs_those_steps_in_one_consumer() -> None:
    import argparse

    from pm.commands.run import child_specs
    from pm.errors import PmError

    def args(*together: str, only: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(
            with_services=False, only=only, max_active=None, rebuild=False, concurrency=2,
            llm_latency_ms=7, config=None, together=list(together),
        )  # fmt: skip

    specs = dict(child_specs(args("draft-reply,classify , fetch-order"), Config()))
    assert set(specs) == {"pm", "classify+draft-reply+fetch-order", "fetch-refund-policy", "send-email"}
    argv = specs["classify+draft-reply+fetch-order"]
    consumer_at = argv.index("consumer")
    assert argv[consumer_at + 1 : consumer_at + 4] == ["classify", "fetch-order", "draft-reply"]  # app order
    assert argv[argv.index("--llm-latency-ms") + 1] == "7"  # two of them take it
    assert "--llm-latency-ms" not in specs["send-email"]
    # --only still names steps: a group runs those of its steps that are wanted.
    only = dict(child_specs(args("classify,draft-reply", only="pm,draft-reply"), Config()))
    assert set(only) == {"pm", "draft-reply"}
    for bad in ("classify,nope", "classify,draft-reply|draft-reply,send-email"):
        with pytest.raises(PmError):
            child_specs(args(*bad.split("|")), Config())


def test_run_consumer_refuses_a_flag_none_of_its_steps_takes(capsys: pytest.CaptureFixture[str]) -> None:
    from pm.cli import main

    # classify takes --rpm, so a set with it does; fetch-order with send-email does not (before any I/O).
    assert main(["run", "consumer", "fetch-order", "send-email", "--rpm", "5"]) == 2
    err = capsys.readouterr().err
    assert "--rpm do(es) not apply to step(s) fetch-order, send-email" in err
    assert main(["run", "consumer", "classify", "nope"]) == 2
    assert "no step 'nope'" in capsys.readouterr().err
