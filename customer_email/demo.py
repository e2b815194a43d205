"""`pm demo`: the seed's customer e-mail, end to end, on the embedded broker.

Every piece runs as its own process, started with the same `pm run ...` commands a
user deploys. The demo checks what it shows and exits non-zero when an expectation
fails, so it doubles as a smoke test.
"""

from __future__ import annotations

import mailbox
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from customer_email.publisher import EmailPublisher
from pm.approvals import ensure_local_key
from pm.broker import LocalBroker, free_port, launch
from pm.config import Config
from pm.errors import PmError
from pm.harness import Child, JournalRow, JournalTail, child_env, pm_argv, workspace
from pm.replay import inspect_process
from pm.review import ReviewClient
from pm.topics import apply_topics

__all__ = ["run_demo", "DemoFailed"]

SEED_ORDER = "A-1001"
_DEAD_ENDS = frozenset({"escalated", "failed", "rejected"})  # no demo process should end like this
WAIT_SECONDS = 60.0


class DemoFailed(PmError):
    """An expectation of the demo did not hold."""


@dataclass
class Progress:
    """Per-process view folded from the journal: what the user sees scroll by."""

    started: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    last_step: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)  # correlation -> input event ids, in order


class JournalWatcher:
    """Tails pm.journal from the start and prints one progress line per entry."""

    def __init__(self, config: Config, labels: dict[str, str]) -> None:
        self._config = config
        self._labels = labels
        self.progress = Progress()
        self._tail = JournalTail(config, "demo-watch")

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for row in self._tail.poll(0.1, max_records=100):
                self._show(row)

    def _show(self, row: JournalRow) -> None:
        entry, cid = row.entry, row.correlation_id
        p = self.progress
        p.started.setdefault(cid, time.monotonic())
        p.inputs.setdefault(cid, []).append(row.input.event_id if row.input is not None else "")
        p.status[cid] = row.status
        steps = row.command_steps()
        if steps:
            p.last_step[cid] = ", ".join(steps)
        elapsed = time.monotonic() - p.started[cid]
        outcome = (
            ""
            if entry.payload.outcome == "applied"
            else f" [{entry.payload.outcome}: {entry.payload.reason}]"
        )
        nxt = f" -> {', '.join(steps)}" if steps else ""
        label = self._labels.get(cid, cid)
        print(f"  {elapsed:6.2f}s  {label:<12} {row.input_type:<20} status={row.status}{nxt}{outcome}")

    def wait_for(self, what: str, check: Callable[[Progress], bool], timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.progress):
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            stuck = {self._labels.get(c, c): s for c, s in self.progress.status.items() if s in _DEAD_ENDS}
            if stuck:
                raise DemoFailed(f"waiting for {what}, but a process ended unexpectedly: {stuck}")
            self.poll(0.2)

    def close(self) -> None:
        self._tail.close()


def _email(
    message_id: str, subject: str, body: str, order_id: str | None, sender: str = "jane@example.com"
) -> dict[str, object]:
    return {
        "message_id": message_id,
        "sender": sender,
        "recipient": "support@example.com",
        "subject": subject,
        "body": body,
        "received_at": datetime.now(UTC).isoformat(),
        "order_id": order_id,
    }


def _delivered(maildir: Path) -> list[mailbox.MaildirMessage]:
    if not (maildir / "new").exists() and not (maildir / "cur").exists():
        return []
    return list(mailbox.Maildir(maildir, create=False))


def _step(title: str) -> None:
    print(f"\n== {title}")


def run_demo(base: Config, *, interactive: bool = False, workdir: Path | None = None) -> int:
    """Run the whole demo; return 0 when every expectation held."""
    with workspace(workdir, "pm-demo-") as work:
        children: list[Child] = []
        broker: LocalBroker | None = None
        watcher: JournalWatcher | None = None
        publisher: EmailPublisher | None = None
        review: ReviewClient | None = None
        try:
            _step("1. local broker, topics, services")
            broker = launch(free_port(), work / "broker.log")
            order_port, smtp_port = free_port(), free_port()
            config = base.with_overrides(
                bootstrap=broker.bootstrap,
                state_dir=work / "state",
                fetch_wait_max_ms=20,
            ).with_settings(
                order_service_url=f"http://127.0.0.1:{order_port}", smtp_host="127.0.0.1", smtp_port=smtp_port
            )
            print(f"broker {broker.bootstrap} (pid {broker.pid}, memory only); work dir {work}")
            apply_topics(config)
            print(f"topics applied from topics.yaml (prefix {config.topic_prefix!r})")
            maildir = work / "maildir"
            env = child_env(config, PM_REVIEWERS=",".join(config.reviewers or ("demo-reviewer",)))
            llm = "OpenAI-compatible endpoint " + config.llm_base_url if config.llm_base_url else "offline"
            print(f"LLM provider: {llm}")
            logs = work / "logs"
            logs.mkdir(exist_ok=True)
            services = [
                Child(
                    "order-service",
                    pm_argv("run", "service", "order-service", "--port", str(order_port)),
                    logs / "order.log",
                ),
                Child(
                    "smtp-sink",
                    pm_argv("run", "service", "smtp-sink", "--port", str(smtp_port), "--maildir", str(maildir)),
                    logs / "smtp.log",
                ),
                Child("pm", pm_argv("run", "pm"), logs / "pm.log"),
                *(
                    Child(step, pm_argv("run", "consumer", step), logs / f"{step}.log")
                    for step in (
                        "classify",
                        "fetch-order",
                        "fetch-refund-policy",
                        "draft-reply",
                        "send-email",
                    )
                ),
            ]
            # The review tool's signing key lives in the state dir; the PM verifies with the same file.
            key_id, _, created = ensure_local_key(config)
            print(
                f"approval signing key {key_id} {'generated into' if created else 'found in'} {config.state_dir}"
            )
            review = ReviewClient(config)
            for child in services:
                child.start(env)
                children.append(child)
                print(
                    f"started {child.name:<20} pid {child.proc.pid if child.proc else '?'}  ({' '.join(child.argv[2:])})"
                )
            pm_child = next(c for c in children if c.name == "pm")

            _step("2. upstream produces two e-mails")
            refund_id = f"<seed-{int(time.time())}@mail.example.com>"
            status_id = f"<status-{int(time.time())}@mail.example.com>"
            labels = {refund_id: "refund", status_id: "status"}
            publisher = EmailPublisher(config)
            for mid, subject, body in (
                (
                    refund_id,
                    "Order A-1001 hasn't arrived",
                    "Hi, my order A-1001 hasn't arrived and I need it for Monday. Can you refund shipping?",
                ),
                (
                    status_id,
                    "Where is my order A-1001?",
                    "Hello, where is my order A-1001? Any tracking update?",
                ),
            ):
                delivery = publisher.publish(_email(mid, subject, body, SEED_ORDER))
                print(
                    f"produced {labels[mid]:<8} key={delivery.correlation_id} -> partition {delivery.partition} offset {delivery.offset}"
                )
            publisher.flush()

            _step("3. live progress (from pm.journal)")
            watcher = JournalWatcher(config, labels)
            watcher.wait_for(
                "the refund e-mail to wait for approval and the status e-mail to be sent",
                lambda p: (
                    p.status.get(refund_id) == "waiting_for_approval" and p.status.get(status_id) == "sent"
                ),
            )
            pending = [a for a in review.pending() if a.correlation_id == refund_id]
            if len(pending) != 1:
                raise DemoFailed(f"expected one pending approval for the refund e-mail, found {len(pending)}")
            approval = pending[0]
            print(f"\nrefund e-mail paused for approval {approval.approval_id}; the draft:\n")
            print("    " + str(approval.proposal.get("body", "")).replace("\n", "\n    "))
            if len(_delivered(maildir)) != 1:
                raise DemoFailed(
                    f"expected 1 delivered message (status e-mail) so far, found {len(_delivered(maildir))}"
                )

            _step("4. a human approves")
            if interactive:
                print(
                    f"run in another terminal:\n  PM_BOOTSTRAP={broker.bootstrap} PM_STATE_DIR={config.state_dir} "
                    f"pm approvals approve {approval.approval_id} --reviewer demo-reviewer"
                )
            else:
                published = review.approve(approval.approval_id, "demo-reviewer")
                event = published.event
                print(
                    f"published signed approval {event.event_id} (key {event.payload.key_id}) to {published.topic}"
                )
            watcher.wait_for(
                "the refund e-mail to be sent",
                lambda p: p.status.get(refund_id) == "sent",
                timeout=3600 if interactive else WAIT_SECONDS,
            )

            _step("5. what the SMTP server received")
            messages = _delivered(maildir)
            for message in messages:
                print(
                    f"  To: {message['To']}  Subject: {message['Subject']}  Message-ID: {message['Message-ID']}"
                )
            if len(messages) != 2:
                raise DemoFailed(f"expected exactly 2 delivered messages, found {len(messages)}")
            refund_mail = [m for m in messages if refund_id in str(m.get("In-Reply-To", ""))]
            if len(refund_mail) != 1:
                raise DemoFailed("expected the refund reply exactly once")
            raw = refund_mail[0].get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            print("\n    " + text.strip().replace("\n", "\n    "))

            _step("6. kill -9 the PM mid-process, restart it")
            crash_id = f"<crash-{int(time.time())}@mail.example.com>"
            labels[crash_id] = "crash"
            publisher.publish(
                _email(
                    crash_id,
                    "Tracking for A-1002?",
                    "Hello, where is my order A-1002? Could you send me a tracking update?",
                    "A-1002",
                    sender="omar@example.com",
                )
            )
            publisher.flush()
            watcher.wait_for("the third e-mail to start", lambda p: crash_id in p.status)
            assert pm_child.proc is not None
            os.kill(pm_child.proc.pid, signal.SIGKILL)
            pm_child.proc.wait(5)
            print(f"  SIGKILL sent to PM pid {pm_child.proc.pid}; restarting it")
            pm_child.start(env)
            watcher.wait_for(
                "the third e-mail to be sent after the restart", lambda p: p.status.get(crash_id) == "sent"
            )
            messages = _delivered(maildir)
            crash_mail = [m for m in messages if crash_id in str(m.get("In-Reply-To", ""))]
            duplicates = {
                cid: ids for cid, ids in watcher.progress.inputs.items() if len(ids) != len(set(ids))
            }
            if len(crash_mail) != 1 or len(messages) != 3 or duplicates:
                raise DemoFailed(
                    f"after the crash: {len(crash_mail)} replies for the third e-mail, {len(messages)} in all, "
                    f"duplicate journal inputs {duplicates}"
                )
            print("  nothing lost, nothing repeated: 3 processes, 3 messages, no input journalled twice")

            _step(f"7. pm inspect {refund_id}")
            flags = [
                "--bootstrap",
                broker.bootstrap,
                "--prefix",
                config.topic_prefix,
                "--state-dir",
                str(config.state_dir),
            ]
            subprocess.run(pm_argv("inspect", refund_id, *flags), check=True, env=env)
            _step("   pm replay --all --verify")
            verify = subprocess.run(pm_argv("replay", "--all", "--verify", *flags), env=env)
            if verify.returncode != 0:
                raise DemoFailed("pm replay --all --verify found differences")

            _step("8. done: every expectation held")
            _print_next_steps()
            return 0
        except DemoFailed as exc:
            print(f"\nDEMO FAILED: {exc}\nlogs: {work / 'logs'}", file=sys.stderr)
            if watcher is not None and broker is not None:
                _explain(config, watcher.progress)
            if workdir is None:
                _dump_logs(work / "logs")
            return 1
        finally:
            if watcher is not None:
                watcher.close()
            if publisher is not None:
                publisher.close()
                publisher = None  # drops the producer now, before the broker goes (no reconnect noise)
            if review is not None:
                review.close()
            for child in reversed(children):
                child.stop()
            if broker is not None:
                broker.stop()
            print(f"stopped {len(children)} processes and the broker")


def _explain(config: Config, progress: Progress) -> None:
    """Why each unfinished or dead-ended process is where it is (from the journal, via inspect)."""
    for cid, status in progress.status.items():
        if status != "sent":
            info = inspect_process(config, cid)
            print(f"  {cid}: {status}, reason: {info.get('reason')}", file=sys.stderr)


def _dump_logs(logs: Path) -> None:
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}", *tail, sep="\n", file=sys.stderr)


def _print_next_steps() -> None:
    print(
        """
Run the pieces by hand (each in its own terminal):
  pm broker start                      # local in-memory broker on 127.0.0.1:9092
  pm topics apply
  pm run service order-service & pm run service smtp-sink --maildir ./maildir
  pm run pm                            # the process manager
  pm run consumer classify             # ... and fetch-order, fetch-refund-policy, draft-reply, send-email
  pm run all                           # or: the PM and every consumer under one supervisor
  pm emit email --file emails.jsonl    # as an upstream system
  pm approvals list / approve ID --reviewer NAME
  pm processes ; pm inspect ID ; pm replay ID --verify
Against real Kafka: docker compose up (see README), or PM_BOOTSTRAP=host:9092 pm ..."""
    )
