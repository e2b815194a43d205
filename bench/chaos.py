"""`chaos`: the fault harness (issue 8). Real processes, real SIGKILLs, then every invariant checked.

It starts its own local broker, the topics, and `pm run all --with-services --max-active N`
(the supervisor runs the order service, the SMTP sink, the PM and every step consumer, and
restarts what dies; N is the PM's default 1000, 40 for the quick run so backpressure is part
of it). Then, all at once and bounded by
a global deadline:

- an upstream publishes N e-mails spread over a while: refund requests (they need a
  human approval) and delivery-status questions (they do not), each from the customer
  who owns the order it quotes;
- a scripted reviewer polls `approvals.requested` and approves, edits (same claims, new
  wording, so the guard passes) or rejects each request, chosen by a hash of the seed
  and the correlation ID;
- a killer SIGKILLs, at random moments (seeded RNG, the seed is printed), the PM and
  random step consumers, by PID (children of the supervisor found in /proc), at least
  K times; the supervisor restarts them.

Once every process is terminal the supervisor is stopped cleanly (SIGTERM) and the
harness checks, printing each verdict:

1. every process is terminal, and its outcome is the one the script implies (rejected
   when rejected, else sent; escalated only with "send uncertain", which a kill between
   SMTP DATA and the `sent` ledger mark legitimately produces);
2. the SMTP sink got exactly one message per process that ended `sent` (its Message-ID is
   the one the process recorded), none for rejected or other escalated ones, at most one
   for an uncertain send, and nothing for anybody else;
3. no side effect ran twice: no two Maildir messages share a Message-ID;
4. `pm replay --all --verify` is clean (`pm.replay.verify_all`);
5. the state folded from the journal equals each PM store (opened read-only), record by
   record, and each store reflects its journal partition up to the end;
6. the killer reached K kills (the PM among them) and the supervisor had every killed
   component running again.

`python -m bench.chaos [--quick] [--emails N] [--kills K] [--seconds T] [--seed S]`
exits 1 when a check fails; `pm bench chaos [--quick]` raises `ChaosFailed` (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mailbox
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench.common import Result
from bench.common import report as print_report
from customer_email.publisher import EmailPublisher
from customer_email.rules import SEND_UNCERTAIN
from pm.approvals import build_decision, ensure_local_key, signing_key
from pm.broker import LocalBroker, free_port, launch
from pm.config import Config
from pm.errors import PmError
from pm.harness import JournalTail, workspace
from pm.journal import ProcessRecord, fold_entry, iter_journal
from pm.replay import deployed_registry, verify_all
from pm.review import ReviewClient
from pm.store import PartitionStore, list_store_paths
from pm.topics import apply_topics, step_set_name

__all__ = [
    "Plan",
    "ChaosFailed",
    "ChaosReport",
    "run_chaos",
    "run",
    "main",
    "check_mail",
    "check_outcomes",
    "check_replay",
    "check_stores",
    "component_name",
    "diff_records",
    "fold_journal",
    "supervised",
]

REVIEWER = "chaos-reviewer"
EDIT_MARKER = "[edited by the reviewer]"
STEPS = ("classify", "fetch-order", "fetch-refund-policy", "draft-reply", "send-email")
KILLABLE = ("pm", *STEPS)
KILL_WEIGHTS = (2, 1, 1, 1, 1, 1)  # the PM is the most interesting victim
KILL_WINDOW = 0.8  # kills fall in this share of the publishing window, counted from the first decision
KILL_SPACING = 1.0  # seconds at least between two kills (a victim needs a moment to be reaped)
TERMINAL = frozenset({"sent", "rejected", "escalated", "failed"})
# Customers and the order each owns (consumers/data/orders.json): a reply to anyone else is refused.
CUSTOMERS = (
    ("jane@example.com", "A-1001"),
    ("omar@example.com", "A-1002"),
    ("li.wei@example.com", "A-1003"),
    ("maria@example.com", "A-1004"),
    ("sam@example.com", "A-1005"),
)

Kind = Literal["refund", "status"]
Verdict = Literal["approve", "edit", "reject"]


class ChaosFailed(PmError):
    """At least one invariant did not hold (the report printed above says which)."""


@dataclass(frozen=True)
class Plan:
    emails: int
    kills: int
    seconds: float  # global deadline of the run phase (publishing, killing, waiting for terminal)
    seed: int
    publish_seconds: float  # e-mails are spread over this long; the kills fall into the same window
    concurrency: int = 4
    # PM backpressure (`--max-active`): the PM's default 1000 for the full run (before step timers
    # counted from the decision time, the PM's input lag at 1000 escalated 692 processes), 40 for
    # the quick (CI) run so that deferred e-mails and rewinds meet the kills there too.
    max_active: int = 1000
    # Steps run on one step consumer (`pm run all --together`): one process, one kill target.
    together: tuple[str, ...] = ()

    @property
    def killable(self) -> tuple[str, ...]:
        """The supervised components a kill may hit: the PM and each step consumer (by its name)."""
        if not self.together:
            return KILLABLE
        group = step_set_name(self.together)
        return ("pm", group, *(s for s in STEPS if s not in self.together))

    @classmethod
    def make(
        cls,
        *,
        quick: bool,
        emails: int | None = None,
        kills: int | None = None,
        seconds: float | None = None,
        seed: int | None = None,
        max_active: int | None = None,
        together: tuple[str, ...] = (),
    ) -> Plan:
        n = emails if emails is not None else (100 if quick else 1000)
        k = kills if kills is not None else (5 if quick else 20)
        if n < 1 or k < 0:
            raise ChaosFailed("--emails must be at least 1 and --kills at least 0")
        if set(together) - set(STEPS) or len(set(together)) != len(together):
            raise ChaosFailed(f"--together: steps of {', '.join(STEPS)}, each once")
        # About the rate 2 busy cores sustain (~3 e-mails/s), so the kills fall on live work.
        publish = max(15.0, n / 3.0)
        return cls(
            emails=n,
            kills=k,
            seconds=seconds if seconds is not None else (150.0 if quick else 900.0),
            seed=seed if seed is not None else random.SystemRandom().randrange(2**31),
            publish_seconds=publish,
            max_active=max_active if max_active is not None else (40 if quick else 1000),
            together=tuple(together),
        )


# ---------------------------------------------------------------- the workload


def _email(plan: Plan, i: int, kind: Kind, sender: str, order_id: str) -> dict[str, Any]:
    if kind == "refund":
        subject = f"Refund for order {order_id}"
        body = f"Hi, my order {order_id} is late and I need it soon. Can you refund the shipping? (#{i})"
    else:
        subject = f"Where is my order {order_id}?"
        body = f"Hello, where is my order {order_id}? Is there a tracking update? (#{i})"
    return {
        "message_id": f"<chaos-{plan.seed}-{i}@mail.example.com>",
        "sender": sender,
        "recipient": "support@example.com",
        "subject": subject,
        "body": body,
        "received_at": datetime.now(UTC).isoformat(),
        "order_id": order_id,
    }


def _verdict(seed: int, correlation_id: str) -> Verdict:
    """The scripted reviewer's choice: stable per (seed, process), half approve, a quarter each edit/reject."""
    digest = hashlib.sha256(f"{seed}:{correlation_id}".encode()).digest()
    return ("approve", "approve", "edit", "reject")[digest[0] % 4]


# ---------------------------------------------------------------- watching the journal


class JournalStatus:
    """Latest recorded status per process, from `pm.journal` (an aborted copy repeats the same status)."""

    def __init__(self, config: Config) -> None:
        self.status: dict[str, str] = {}
        self.entries = 0
        self._tail = JournalTail(config, "chaos-watch", decode_inputs=False)

    def poll(self, timeout: float) -> None:
        for row in self._tail.poll(timeout, max_records=1000):
            self.entries += 1
            self.status[row.correlation_id] = row.status

    def close(self) -> None:
        self._tail.close()


# ---------------------------------------------------------------- the reviewer


class Reviewer:
    """Decides every pending approval as the script says, publishing signed decisions."""

    def __init__(self, config: Config, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.client = ReviewClient(config)
        self.key_id, self.secret = signing_key(config)
        self.decided: dict[str, Verdict] = {}  # correlation ID -> verdict published
        self._approvals: set[str] = set()

    def tick(self) -> int:
        done = 0
        for pending in self.client.pending():
            if pending.approval_id in self._approvals or pending.expired():
                continue
            request = pending.request.payload
            verdict = _verdict(self.seed, pending.correlation_id)
            event = build_decision(
                correlation_id=pending.correlation_id,
                approval_id=pending.approval_id,
                decision=verdict,
                reviewer=REVIEWER,
                draft_hash=request.draft_hash,
                policy_version=request.policy_version,
                key_id=self.key_id,
                secret=self.secret,
                reason="scripted rejection (chaos harness)" if verdict == "reject" else None,
                # Same structured claims, new wording: the guard must let this through.
                edited_body=f"{EDIT_MARKER}\n{pending.proposal['body']}" if verdict == "edit" else None,
                causation_id=pending.request.event_id,
            )
            self.client.publish(event)
            self._approvals.add(pending.approval_id)
            self.decided[pending.correlation_id] = verdict
            done += 1
        return done

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- the killer


def component_name(argv: list[str]) -> str | None:
    """`python -m pm run consumer fetch-order ...` -> fetch-order (`consumer b a` -> a+b); `run pm` -> pm."""
    if "run" not in argv:
        return None
    rest = argv[argv.index("run") + 1 :]
    if not rest:
        return None
    if rest[0] == "consumer":
        steps = []
        for word in rest[1:]:
            if word.startswith("-"):
                break
            steps.append(word)
        return step_set_name(steps) if steps else None
    if rest[0] == "service":  # `run service [flags] NAME`: the name is the last word before its options
        names = [a for a in rest[1:] if not a.startswith("-")]
        flags_with_values = {"--bootstrap", "--prefix", "--state-dir", "--config", "--app"}
        words = rest[1:]
        i = 0
        while i < len(words):
            if words[i] in flags_with_values:
                i += 2
                continue
            if not words[i].startswith("-"):
                return words[i]
            i += 1
        return names[0] if names else None
    return rest[0]


def supervised(supervisor_pid: int) -> dict[str, int]:
    """Live children of the supervisor by component name (from /proc, zombies excluded)."""
    found: dict[str, int] = {}
    tasks = Path(f"/proc/{supervisor_pid}/task")
    with contextlib.suppress(OSError):
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                for pid_text in (task / "children").read_text().split():
                    pid = int(pid_text)
                    try:
                        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
                        argv = [
                            a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a
                        ]
                    except OSError:
                        continue
                    name = component_name(argv)
                    if name is not None and state != "Z":
                        found[name] = pid
    return found


@dataclass
class Killer:
    plan: Plan
    rng: random.Random
    targets: list[str] = field(default_factory=list)
    kills: list[tuple[float, str, int]] = field(default_factory=list)  # (t, component, pid)
    next_at: float | None = None
    times: list[float] = field(default_factory=list)  # planned kill times (monotonic), once armed

    def __post_init__(self) -> None:
        k = self.plan.kills
        killable = self.plan.killable
        # The PM as often as before; a step consumer by the steps it runs (one process for several).
        weights = (KILL_WEIGHTS[0], *(len(name.split("+")) for name in killable[1:]))
        self.targets = self.rng.choices(killable, weights=weights, k=k)
        if k >= 1 and "pm" not in self.targets:
            self.targets[self.rng.randrange(k)] = "pm"
        if k >= 2 and set(self.targets) == {"pm"}:
            self.targets[self.rng.randrange(k)] = self.rng.choice(killable[1:])

    def arm(self, now: float) -> None:
        """Plan the kills at random moments of the rest of the publishing window, while work is live.

        (Random gaps summed could outlast the work: a fast run then ended with kills still due.)
        """
        if self.next_at is None:
            window = KILL_WINDOW * self.plan.publish_seconds
            self.times = sorted(now + self.rng.uniform(0.0, window) for _ in self.targets)
            self.next_at = self.times[0] if self.times else None

    @property
    def done(self) -> bool:
        return len(self.kills) >= len(self.targets)

    def tick(self, now: float, started: float, supervisor_pid: int) -> None:
        if self.next_at is None or self.done or now < self.next_at:
            return
        target = self.targets[len(self.kills)]
        pid = supervised(supervisor_pid).get(target)
        if pid is None:  # in the supervisor's restart backoff: try again shortly
            self.next_at = now + 0.5
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.kills.append((now - started, target, pid))
        print(f"  {now - started:7.1f}s  kill #{len(self.kills)}: SIGKILL {target} (pid {pid})", flush=True)
        self.next_at = None if self.done else max(now + KILL_SPACING, self.times[len(self.kills)])


# ---------------------------------------------------------------- checks


@dataclass
class ChaosReport:
    plan: Plan
    elapsed: float = 0.0
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, ok, detail)
    outcomes: Counter[str] = field(default_factory=Counter)
    kills: list[tuple[float, str, int]] = field(default_factory=list)
    restarts: int = 0
    messages: int = 0
    decisions: Counter[str] = field(default_factory=Counter)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    @property
    def failed(self) -> list[str]:
        return [name for name, ok, _ in self.checks if not ok]


def _listing(items: dict[Any, Any] | list[Any], limit: int = 5) -> str:
    shown = list(items.items())[:limit] if isinstance(items, dict) else items[:limit]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(str(x) for x in shown) + more


def fold_journal(config: Config) -> tuple[dict[str, ProcessRecord], dict[str, int], dict[int, int]]:
    """Every process folded from the journal alone: (records, partition per process, next offset per partition)."""
    registry = deployed_registry()
    folded: dict[str, ProcessRecord] = {}
    where: dict[str, int] = {}
    ends: dict[int, int] = {}
    for record in iter_journal(config):
        cid = record.entry.correlation_id
        after = fold_entry(registry, folded.get(cid), record.entry, record.event, record.offset)
        if after is not None:
            folded[cid] = after
        where[cid] = record.partition
        ends[record.partition] = record.offset + 1
    return folded, where, ends


def diff_records(left: Any, right: Any, path: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        out: list[str] = []
        for key in sorted(set(left) | set(right)):
            out += diff_records(left.get(key), right.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if left == right else [f"{path}: journal {str(left)[:80]!r} != store {str(right)[:80]!r}"]


def check_stores(config: Config, report: ChaosReport) -> dict[str, ProcessRecord]:
    folded, where, ends = fold_journal(config)
    stores = list_store_paths(config)
    mismatched: dict[str, str] = {}
    behind: dict[int, str] = {}
    seen: set[str] = set()
    for partition, path in stores:
        store = PartitionStore(path, partition, read_only=True)
        try:
            for cid, data in store.records():
                seen.add(cid)
                record = folded.get(cid)
                if record is None:
                    mismatched[cid] = "in the store, not in the journal"
                    continue
                if where.get(cid) != partition:
                    mismatched[cid] = f"store partition {partition}, journal partition {where.get(cid)}"
                    continue
                expected = json.loads(json.dumps(record.to_json()))
                diffs = diff_records(expected, data)
                if diffs:
                    mismatched[cid] = "; ".join(diffs[:3])
            if store.next_offset != ends.get(partition, 0):
                behind[partition] = (
                    f"store next_offset {store.next_offset}, journal ends at {ends.get(partition, 0)}"
                )
        finally:
            store.close()
    for cid in folded:
        if cid not in seen:
            mismatched[cid] = "in the journal, missing from the store"
    for partition, end in ends.items():
        if partition not in dict(stores):
            behind[partition] = f"no store for journal partition {partition} (journal ends at {end})"
    report.check(
        "state folded from the journal equals the store",
        not mismatched and not behind and bool(stores),
        f"{len(folded)} processes, {len(stores)} stores"
        + (f"; differ: {_listing(mismatched)}" if mismatched else "")
        + (f"; offsets: {_listing(behind)}" if behind else ""),
    )
    return folded


def check_outcomes(
    plan: Plan,
    kinds: dict[str, Kind],
    folded: dict[str, ProcessRecord],
    verdicts: dict[str, Verdict],
    report: ChaosReport,
) -> None:
    missing = [cid for cid in kinds if cid not in folded]
    not_terminal = {
        cid: folded[cid].status for cid in kinds if cid in folded and folded[cid].status not in TERMINAL
    }
    strangers = [cid for cid in folded if cid not in kinds]
    report.check(
        "every process terminal",
        not missing and not not_terminal and not strangers,
        f"{len(kinds) - len(missing) - len(not_terminal)}/{len(kinds)} terminal"
        + (f"; never journalled: {_listing(missing)}" if missing else "")
        + (f"; not terminal: {_listing(not_terminal)}" if not_terminal else "")
        + (f"; unknown processes: {_listing(strangers)}" if strangers else ""),
    )
    unexpected: dict[str, str] = {}
    for cid, kind in kinds.items():
        record = folded.get(cid)
        if record is None:
            continue
        status, reason = record.status, record.state.reason or ""
        report.outcomes[status + (" (send uncertain)" if SEND_UNCERTAIN in reason else "")] += 1
        verdict = verdicts.get(cid)
        if kind == "refund" and verdict is None and status in TERMINAL:
            unexpected[cid] = f"refund request ended {status} without a review ({reason})"
        elif verdict == "reject":
            if status != "rejected":
                unexpected[cid] = f"rejected by the reviewer, ended {status} ({reason})"
        elif status == "escalated" and SEND_UNCERTAIN in reason:
            pass  # killed between SMTP DATA and the `sent` mark: a human must check, correctly
        elif status != "sent":
            unexpected[cid] = f"{kind}/{verdict or 'no review'} ended {status} ({reason})"
    report.check(
        "outcomes follow the script (escalated only for an uncertain send)",
        not unexpected,
        ", ".join(f"{k}={v}" for k, v in sorted(report.outcomes.items()))
        + (f"; unexpected: {_listing(unexpected)}" if unexpected else ""),
    )


def check_mail(
    maildir: Path,
    kinds: dict[str, Kind],
    folded: dict[str, ProcessRecord],
    verdicts: dict[str, Verdict],
    report: ChaosReport,
) -> None:
    messages = list(mailbox.Maildir(maildir, create=False)) if (maildir / "cur").exists() else []
    report.messages = len(messages)
    by_process: dict[str, list[mailbox.MaildirMessage]] = {}
    ids = Counter(str(m.get("Message-ID", "")).strip() for m in messages)
    for message in messages:
        cid = str(message.get("X-PM-Correlation-ID", "")).strip()
        by_process.setdefault(cid, []).append(message)
    wrong: dict[str, str] = {}
    for cid, got in by_process.items():
        if cid not in kinds:
            wrong[cid or "(no correlation header)"] = f"{len(got)} message(s) for no process of this run"
        elif any(str(m.get("In-Reply-To", "")).strip() != cid for m in got):
            wrong[cid] = "In-Reply-To does not name the customer's e-mail"
    for cid in kinds:
        record = folded.get(cid)
        got = by_process.get(cid, [])
        status = record.status if record is not None else "missing"
        reason = (record.state.reason or "") if record is not None else ""
        if status == "sent":
            recorded = getattr(record.state, "sent_message_id", None) if record is not None else None
            if len(got) != 1:
                wrong[cid] = f"ended sent, the SMTP sink got {len(got)} messages"
            elif str(got[0]["Message-ID"]).strip() != recorded:
                wrong[cid] = f"sent {got[0]['Message-ID']}, the process recorded {recorded}"
            elif (EDIT_MARKER in _body(got[0])) != (verdicts.get(cid) == "edit"):
                wrong[cid] = "the sent body does not match the reviewer's edit (or lack of one)"
        elif status == "escalated" and SEND_UNCERTAIN in reason:
            if len(got) > 1:
                wrong[cid] = f"uncertain send, yet {len(got)} messages"
        elif got:
            wrong[cid] = f"ended {status}, yet the SMTP sink got {len(got)} message(s)"
    sent = sum(1 for r in folded.values() if r.status == "sent")
    report.check(
        "one SMTP message per sent process, none for the others",
        not wrong,
        f"{len(messages)} messages, {sent} processes sent" + (f"; wrong: {_listing(wrong)}" if wrong else ""),
    )
    dupes = {mid: n for mid, n in ids.items() if n > 1}
    report.check(
        "no side effect ran twice (Message-IDs unique)",
        not dupes and "" not in ids,
        f"{len(ids)} distinct Message-IDs" + (f"; repeated: {_listing(dupes)}" if dupes else ""),
    )


def _body(message: mailbox.MaildirMessage) -> str:
    raw = message.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def check_replay(config: Config, report: ChaosReport) -> None:
    verified = verify_all(config)
    report.check(
        "pm replay --all --verify clean",
        verified.ok,
        f"{verified.processes} processes, {verified.events} entries, {verified.checked} re-decided"
        + (f"; differing: {_listing(sorted(verified.differing))}" if verified.differing else "")
        + (f"; errors: {_listing(verified.errors)}" if verified.errors else ""),
    )


# ---------------------------------------------------------------- running it


def _stop(proc: subprocess.Popen[bytes], children: dict[str, int], grace: float) -> bool:
    """SIGTERM the supervisor (it stops its children); SIGKILL it and them by PID if that takes too long."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
        clean = True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        clean = False
    for pid in children.values():  # normally gone already; anything left is ours to end
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return clean


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the `finally` below still stops everything started (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_chaos(plan: Plan, *, workdir: Path | None = None) -> ChaosReport:
    """Run the whole harness; the report says which checks held (the caller decides the exit code)."""
    with _exit_on_sigterm():
        return _run_chaos(plan, workdir)


def _run_chaos(plan: Plan, workdir: Path | None) -> ChaosReport:
    report = ChaosReport(plan)
    rng = random.Random(plan.seed)
    print(
        f"chaos: {plan.emails} e-mails, {plan.kills} kills, deadline {plan.seconds:.0f}s, seed {plan.seed} "
        f"(rerun with --seed {plan.seed})",
        flush=True,
    )
    with workspace(workdir, "pm-chaos-") as work:
        broker: LocalBroker | None = None
        supervisor: subprocess.Popen[bytes] | None = None
        tail: JournalStatus | None = None
        reviewer: Reviewer | None = None
        publisher: EmailPublisher | None = None
        last_children: dict[str, int] = {}
        started = time.monotonic()
        try:
            broker = launch(free_port(), work / "broker.log")
            order_port, smtp_port = free_port(), free_port()
            config = Config(
                bootstrap=broker.bootstrap,
                topic_prefix=f"chaos{uuid.uuid4().hex[:6]}.",
                state_dir=work / "state",
                reviewers=(REVIEWER,),
                fetch_wait_max_ms=20,
            ).with_settings(
                order_service_url=f"http://127.0.0.1:{order_port}", smtp_host="127.0.0.1", smtp_port=smtp_port
            )
            apply_topics(config)
            ensure_local_key(config)
            maildir = config.state_dir / "maildir"  # the smtp-sink service's default
            logs = work / "logs"
            logs.mkdir(exist_ok=True)
            env = {
                **os.environ,
                "PM_ORDER_SERVICE_URL": config.setting("order_service_url"),
                "PM_SMTP_HOST": "127.0.0.1",
                "PM_SMTP_PORT": str(smtp_port),
                "PM_FETCH_WAIT_MAX_MS": "20",
                "PM_REVIEWERS": REVIEWER,
                "PM_LLM_BASE_URL": "",  # offline rules: deterministic, no network
                "OTEL_SDK_DISABLED": "true",
            }
            env.pop("PM_CONFIG", None)
            argv = [sys.executable, "-m", "pm", "run", "all", "--with-services"]
            argv += ["--concurrency", str(plan.concurrency), "--max-active", str(plan.max_active)]
            argv += ["--together", ",".join(plan.together)] if plan.together else []
            argv += ["--bootstrap", broker.bootstrap]
            argv += ["--prefix", config.topic_prefix, "--state-dir", str(config.state_dir)]
            with (logs / "supervisor.log").open("ab") as out:
                supervisor = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=work
                )
            print(
                f"broker {broker.bootstrap} (pid {broker.pid}); supervisor pid {supervisor.pid}; work dir {work}"
            )

            kinds: dict[str, Kind] = {}
            batch: list[dict[str, Any]] = []
            for i in range(plan.emails):
                kind: Kind = "refund" if rng.random() < 0.5 else "status"
                sender, order_id = rng.choice(CUSTOMERS)
                batch.append(_email(plan, i, kind, sender, order_id))
                kinds[batch[-1]["message_id"]] = kind
            publisher = EmailPublisher(config)
            tail = JournalStatus(config)
            reviewer = Reviewer(config, plan.seed)
            killer = Killer(plan, rng)
            print(f"kill plan: {', '.join(killer.targets) or 'none'}")

            published = 0
            deadline = started + plan.seconds
            publish_from = time.monotonic()
            next_review = next_line = 0.0
            while True:
                now = time.monotonic()
                if now > deadline:
                    print(f"  deadline of {plan.seconds:.0f}s reached", flush=True)
                    break
                due = min(plan.emails, int((now - publish_from) / plan.publish_seconds * plan.emails) + 1)
                if due > published:
                    for email in batch[published:due]:
                        email["received_at"] = datetime.now(UTC).isoformat()
                    publisher.publish_many(batch[published:due])
                    published = due
                tail.poll(0.2)
                if tail.entries:
                    killer.arm(now)  # the PM is up and journalling: start killing
                killer.tick(time.monotonic(), started, supervisor.pid)
                if now >= next_review:
                    reviewer.tick()
                    next_review = now + 1.0
                if supervisor.poll() is not None:
                    raise ChaosFailed(f"the supervisor exited with {supervisor.returncode}")
                terminal = sum(1 for cid in kinds if tail.status.get(cid) in TERMINAL)
                if now >= next_line:
                    states = Counter(tail.status.get(cid, "not started") for cid in kinds)
                    print(
                        f"  {now - started:7.1f}s  published {published}/{plan.emails}, "
                        f"kills {len(killer.kills)}/{plan.kills}, decisions {len(reviewer.decided)}, "
                        + ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
                        flush=True,
                    )
                    next_line = now + 5.0
                if terminal == plan.emails and published == plan.emails and killer.done:
                    break  # (a kill still due after the work ended lands on idle processes: still a kill)
            report.kills = killer.kills
            report.decisions = Counter(reviewer.decided.values())
            # Did the supervisor bring every victim back? (give a restart backoff a moment)
            back_by = time.monotonic() + 20
            while time.monotonic() < back_by:
                last_children = supervised(supervisor.pid)
                if set(plan.killable) <= set(last_children):
                    break
                time.sleep(0.5)
            killed = {name for _, name, _ in killer.kills}
            report.check(
                f"at least {plan.kills} SIGKILLs (the PM among them), every victim restarted",
                len(killer.kills) >= plan.kills
                and ("pm" in killed or plan.kills == 0)
                and set(plan.killable) <= set(last_children),
                f"{len(killer.kills)} kills ({', '.join(f'{n} {c}' for n, c in Counter(n for _, n, _ in killer.kills).items())}); "
                f"running at the end: {', '.join(sorted(last_children))}",
            )
            print("stopping the supervisor (SIGTERM: the PM commits, closes its stores)", flush=True)
            clean = _stop(supervisor, last_children, grace=40)
            report.restarts = (
                (logs / "supervisor.log").read_text(errors="replace").count("supervisor: restarted ")
            )
            report.check("supervisor stopped cleanly", clean)
            report.elapsed = time.monotonic() - started

            print("checks:", flush=True)
            folded = check_stores(config, report)
            check_outcomes(plan, kinds, folded, reviewer.decided, report)
            check_mail(maildir, kinds, folded, reviewer.decided, report)
            check_replay(config, report)
        except ChaosFailed as exc:
            report.check("harness ran", False, str(exc))
        finally:
            for closer in (tail, reviewer):
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer.close()
            if publisher is not None:
                with contextlib.suppress(Exception):
                    publisher.flush(5)
                publisher = None  # drop its producer before the broker goes (no reconnect noise)
            if supervisor is not None and supervisor.poll() is None:
                _stop(supervisor, supervised(supervisor.pid) or last_children, grace=20)
            if broker is not None:
                broker.stop()
            if not report.ok and workdir is None:
                _dump_logs(work / "logs")
    return report


def _dump_logs(logs: Path) -> None:
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        interesting = [ln for ln in lines if "Traceback" in ln or "ERROR" in ln or "Error" in ln][-20:]
        print(
            f"--- {log.name}: {len(lines)} lines; last errors:",
            *interesting,
            *lines[-15:],
            sep="\n",
            file=sys.stderr,
        )


def _result(report: ChaosReport) -> Result:
    plan = report.plan
    result = Result(
        "chaos",
        report.elapsed,
        "s",
        extra={
            "ok": report.ok,
            "failed": report.failed,
            "seed": plan.seed,
            "emails": plan.emails,
            "kills": len(report.kills),
            "restarts": report.restarts,
            "outcomes": dict(report.outcomes),
            "decisions": dict(report.decisions),
            "messages": report.messages,
        },
    )
    report_rows = [
        ("seed", str(plan.seed)),
        ("e-mails", str(plan.emails)),
        ("kills", ", ".join(f"{t:.1f}s {n}" for t, n, _ in report.kills) or "none"),
        ("supervisor restarts", str(report.restarts)),
        ("reviewer", ", ".join(f"{k} {v}" for k, v in sorted(report.decisions.items())) or "none"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())) or "none"),
        ("SMTP messages", str(report.messages)),
        ("elapsed", f"{report.elapsed:.1f} s"),
        ("checks", "all passed" if report.ok else "FAILED: " + "; ".join(report.failed)),
    ]
    print_report(report_rows, result)
    return result


def run(quick: bool) -> Result:
    """`pm bench chaos [--quick]`: raises ChaosFailed (exit 2) when an invariant did not hold."""
    report = run_chaos(Plan.make(quick=quick))
    result = _result(report)
    if not report.ok:
        raise ChaosFailed(f"chaos: {len(report.failed)} check(s) failed: {'; '.join(report.failed)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI size: 100 e-mails, 5 kills")
    parser.add_argument(
        "--emails", type=int, default=None, help="e-mails to publish (default 1000, quick 100)"
    )
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs at least (default 20, quick 5)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="global deadline (default 900, quick 150)"
    )
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (printed; default random)")
    parser.add_argument(
        "--max-active", type=int, default=None, help="PM backpressure (default 1000, quick 40)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs, Maildir and stores here")
    parser.add_argument(
        "--together", default="", help="comma-separated steps run on one step consumer (pm run all --together)"
    )
    args = parser.parse_args(argv)
    try:
        plan = Plan.make(
            quick=args.quick,
            emails=args.emails,
            kills=args.kills,
            seconds=args.seconds,
            seed=args.seed,
            max_active=args.max_active,
            together=tuple(n.strip() for n in args.together.split(",") if n.strip()),
        )
    except ChaosFailed as exc:
        parser.error(str(exc))
    report = run_chaos(plan, workdir=args.workdir)
    _result(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
