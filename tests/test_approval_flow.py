"""Issue 5 end to end on a real broker: the PM pauses for a human, the review tool's decision resumes it.

The PM runs for real (`run_process_manager` in a thread); the step consumers are played by
a scripted responder that answers every command with a fixed, guard-passing result, so the
only thing between `ApprovalRequested` and `SendEmail` is the decision on `approvals`.
Decisions go through `pm.review.ReviewClient` (the review tool) or, for the bad ones, are
built with `pm.approvals.build_decision` and tampered with.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from promise_kit import quick_groups
from test_runtime_support import read_topic

from customer_email.events import (
    STEPS,
    ClassifyEmail,
    Draft,
    DraftReply,
    EmailClassified,
    EmailClassifiedPayload,
    EmailSent,
    EmailSentPayload,
    FetchOrder,
    FetchRefundPolicy,
    Order,
    OrderFetched,
    OrderFetchedPayload,
    RefundPolicy,
    RefundPolicyFetched,
    RefundPolicyFetchedPayload,
    ReplyDrafted,
    ReplyDraftedPayload,
    SendEmail,
)
from customer_email.publisher import EmailPublisher
from customer_email.rules import Budgets, CustomerEmailProcess
from pm.approvals import build_decision
from pm.broker import LocalBroker
from pm.codec import decode, encode
from pm.config import Config
from pm.events import ApprovalDecided, ApprovalRequested, DlqRecord, Event, JournalEntry, LlmCall, derive_id
from pm.journal import iter_journal
from pm.kafka import make_consumer, make_producer
from pm.review import ReviewClient
from pm.runtime import run_process_manager
from pm.topics import apply_topics

SECRET = "flow-secret"
POLICY = RefundPolicy(
    category="refund_request",
    version="refund-v3",
    refund_shipping=True,
    max_refund_cents=10_000,
    max_refund_ratio=0.5,
    allowed_promises=["refund_shipping"],
    summary="Shipping refunded for lost parcels.",
)
LLM = LlmCall(provider="offline", model="scripted", prompt="[]", raw_output="{}")


def draft_for(order_id: str) -> Draft:
    return Draft(
        subject="Re: Where is my parcel?",
        body=f"Dear Ana,\nwe are sorry that order {order_id} got lost. We refund the shipping cost.\nSupport",
        order_id=order_id,
        refund_cents=490,
        promises=["refund_shipping"],
    )


# ---------------------------------------------------------------- the scripted step consumers


@dataclass
class ScriptedSteps:
    """Answers every command on cmd.* once (by command ID) with a result that passes the guard."""

    config: Config
    stop: threading.Event = field(default_factory=threading.Event)
    answered: dict[str, Event] = field(default_factory=dict)  # command_id -> command
    errors: list[BaseException] = field(default_factory=list)

    def sends(self, correlation_id: str) -> list[SendEmail]:
        return [
            c
            for c in self.answered.values()
            if isinstance(c, SendEmail) and c.correlation_id == correlation_id
        ]

    def run(self) -> None:
        try:
            consumer = make_consumer(self.config, "scripted-steps", f"g-{uuid.uuid4().hex}")
            topics = [self.config.topic(f"cmd.{step}") for step in STEPS]
            meta = consumer.list_topics(timeout=10).topics
            consumer.assign(
                [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions]
            )
            producer = make_producer(self.config, "scripted-steps")
            while not self.stop.is_set():
                for msg in consumer.consume(100, timeout=0.05):
                    if msg.error() is not None or msg.value() is None:
                        continue
                    command = decode(msg.value() or b"")
                    cmd_id = command.payload.command_id
                    if cmd_id in self.answered:
                        continue  # an aborted transaction's copy (the local broker shows those)
                    self.answered[cmd_id] = command
                    result = self.result_for(command)
                    producer.produce(
                        self.config.topic("step.results"),
                        key=command.correlation_id.encode(),
                        value=encode(result),
                    )
                producer.flush(5)
            consumer.close()
        except BaseException as exc:  # surfaced by the fixture
            self.errors.append(exc)

    def result_for(self, command: Event) -> Event:
        p = command.payload
        env: dict[str, Any] = {
            "event_id": derive_id(p.command_id, "result"),
            "correlation_id": command.correlation_id,
            "causation_id": command.event_id,
            "occurred_at": datetime.now(UTC),  # the PM's clock for deadlines is event time
        }
        base = {"command_id": p.command_id, "attempt": p.attempt}
        if isinstance(command, ClassifyEmail):
            return EmailClassified(
                **env,
                payload=EmailClassifiedPayload(
                    **base,
                    intent="refund_request",
                    risk="medium",
                    order_id=p.email.order_id,
                    confidence=0.9,
                    llm=LLM,
                ),
            )
        if isinstance(command, FetchOrder):
            order = Order(
                order_id=p.order_id,
                customer_email="ana@example.net",
                customer_name="Ana",
                carrier="DHL",
                status="lost",
                total_cents=4990,
                shipping_cost_cents=490,
            )
            return OrderFetched(
                **env, payload=OrderFetchedPayload(**base, order_id=p.order_id, found=True, order=order)
            )
        if isinstance(command, FetchRefundPolicy):
            return RefundPolicyFetched(**env, payload=RefundPolicyFetchedPayload(**base, policy=POLICY))
        if isinstance(command, DraftReply):
            assert p.order is not None
            return ReplyDrafted(
                **env, payload=ReplyDraftedPayload(**base, draft=draft_for(p.order.order_id), llm=LLM)
            )
        assert isinstance(command, SendEmail)
        return EmailSent(
            **env,
            payload=EmailSentPayload(
                **base, to=p.to, message_id=f"<{p.command_id}@pm>", smtp_response="250 OK"
            ),
        )


# ---------------------------------------------------------------- watching the journal and the DLQ


class Watch:
    """Accumulates journal entries and DLQ records as they are committed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.consumer: Consumer = make_consumer(config, "watch", f"g-{uuid.uuid4().hex}")
        topics = [config.topic("pm.journal"), config.topic("pm.dlq")]
        meta = self.consumer.list_topics(timeout=10).topics
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions]
        )
        self.entries: dict[str, list[tuple[JournalEntry, Event]]] = {}
        self.dlq: list[DlqRecord] = []
        self._seen: set[str] = set()

    def poll(self) -> None:
        for msg in self.consumer.consume(500, timeout=0.05):
            if msg.error() is not None or msg.value() is None:
                continue
            record = decode(msg.value() or b"")
            if record.event_id in self._seen:
                continue
            self._seen.add(record.event_id)
            if isinstance(record, JournalEntry):
                event = decode(record.payload.event)
                self.entries.setdefault(record.correlation_id, []).append((record, event))
            elif isinstance(record, DlqRecord):
                self.dlq.append(record)

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.poll()

    def status(self, cid: str) -> str | None:
        entries = self.entries.get(cid)
        return entries[-1][0].payload.status if entries else None

    def wait_status(self, cid: str, status: str, timeout: float = 20.0) -> None:
        self.wait(
            f"{cid} to be {status} (is {self.status(cid)})", lambda: self.status(cid) == status, timeout
        )

    def decisions(self, cid: str) -> list[tuple[JournalEntry, ApprovalDecided]]:
        return [(e, ev) for e, ev in self.entries.get(cid, []) if isinstance(ev, ApprovalDecided)]

    def wait_decisions(self, cid: str, count: int) -> list[tuple[str, str | None, str]]:
        """(outcome, reason, status after) of the first `count` journalled decisions."""
        self.wait(f"{count} journalled decisions for {cid}", lambda: len(self.decisions(cid)) >= count)
        return [
            (e.payload.outcome, e.payload.reason, e.payload.status) for e, _ in self.decisions(cid)[:count]
        ]

    def close(self) -> None:
        self.consumer.close()


# ---------------------------------------------------------------- running things


@contextlib.contextmanager
def pm_running(config: Config, budgets: Budgets) -> Iterator[io.StringIO]:
    log = io.StringIO()
    stop, started = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_process_manager(
                config,
                stop=stop,
                definitions=[CustomerEmailProcess(budgets)],
                log=log,
                on_started=lambda _: started.set(),
            )
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="pm", daemon=True)
    thread.start()
    assert started.wait(30), "PM did not start"
    try:
        yield log
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "PM did not stop"
    assert not failure, f"PM crashed: {failure[0]!r}\n{log.getvalue()}"


@contextlib.contextmanager
def steps_running(config: Config) -> Iterator[ScriptedSteps]:
    steps = ScriptedSteps(config)
    thread = threading.Thread(target=steps.run, name="steps", daemon=True)
    thread.start()
    try:
        yield steps
    finally:
        steps.stop.set()
        thread.join(10)
    assert not steps.errors, repr(steps.errors)


def flow_config(broker: LocalBroker, state_dir: Path) -> Config:
    config = Config(
        bootstrap=broker.bootstrap,
        topic_prefix=f"f{uuid.uuid4().hex[:10]}.",
        state_dir=state_dir,
        instance_id=f"pm-{uuid.uuid4().hex[:6]}",
        fetch_wait_max_ms=10,
        approval_keys={"k1": SECRET},
        reviewers=("alice", "bob"),
    )
    apply_topics(config)
    return quick_groups(config)  # each PM start joins in ~1 s, not ~7 s: membership is not under test


def send_email(config: Config) -> str:
    """A refund e-mail for a fresh order; returns its correlation ID."""
    n = uuid.uuid4().hex[:6]
    delivery = EmailPublisher(config).publish(
        {
            "message_id": f"<refund-{n}@example.net>",
            "sender": "Ana <ana@example.net>",
            "recipient": "support@example.com",
            "subject": "Where is my parcel?",
            "body": "My parcel never arrived, I want my money back.",
            "order_id": f"ORD-{int(n, 16) % 100000:05d}",
        }
    )
    return delivery.correlation_id


def waiting_request(config: Config, watch: Watch, cid: str) -> ApprovalRequested:
    watch.wait_status(cid, "waiting_for_approval")
    [pending] = [p for p in ReviewClient(config).pending() if p.correlation_id == cid]
    return pending.request


def sends_issued(config: Config, watch: Watch, cid: str) -> list[SendEmail]:
    """Every SendEmail the PM has issued for `cid`, with no waiting: call it at a journaled sync point.

    A command exists only as an output of the journal entry that decided it, committed in the same
    transaction, so the entries the watch has seen up to a state (waiting, rejected, escalated, sent)
    name every SendEmail issued before it; `cmd.send-email`, read to its end, must agree (aborted
    copies, which the local broker shows, carry the same command ID).
    """
    watch.poll()
    journaled = {
        command.payload.command_id: command
        for entry, _ in watch.entries.get(cid, [])
        for command in map(decode, entry.payload.commands)
        if isinstance(command, SendEmail)
    }
    on_topic = {
        command.payload.command_id
        for command in (decode(m.value()) for m in read_topic(config, "cmd.send-email"))
        if command.correlation_id == cid
    }
    assert on_topic == set(journaled), (on_topic, set(journaled))
    return list(journaled.values())


def journaled_status(config: Config, cid: str) -> str | None:
    """The process's status after the last entry in the journal, read to its end (partition EOF)."""
    statuses = [r.entry.payload.status for r in iter_journal(config, idle_timeout=10) if r.entry.correlation_id == cid]
    return statuses[-1] if statuses else None


# ---------------------------------------------------------------- one PM for the decision tests


@dataclass
class Flow:
    config: Config
    watch: Watch
    steps: ScriptedSteps
    review: ReviewClient


@pytest.fixture(scope="module")
def flow(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    config = flow_config(broker, tmp_path_factory.mktemp("flow"))
    watch = Watch(config)
    with steps_running(config) as steps, pm_running(config, Budgets(approval_timeout=timedelta(minutes=10))):
        yield Flow(config, watch, steps, ReviewClient(config))
    watch.close()


def test_refund_email_pauses_and_approval_sends_it_once(flow: Flow) -> None:
    cid = send_email(flow.config)
    request = waiting_request(flow.config, flow.watch, cid)
    assert sends_issued(flow.config, flow.watch, cid) == []  # paused for the human: nothing issued
    proposed = Draft.model_validate_json(request.payload.proposal)
    assert request.payload.reasons and proposed == draft_for(json.loads(request.payload.context)["email"]["order_id"])

    flow.review.approve(request.payload.approval_id, "alice")
    flow.watch.wait_status(cid, "sent")
    flow.watch.wait("the SendEmail to be answered", lambda: len(flow.steps.sends(cid)) == 1)
    [send] = flow.steps.sends(cid)
    assert send.payload.body == proposed.body and send.payload.to == "ana@example.net"

    # A second approval (the reviewer clicked twice) is journalled as refused; still one send.
    flow.review.approve(request.payload.approval_id, "bob", force=True)
    outcomes = flow.watch.wait_decisions(cid, 2)
    assert outcomes[0][0] == "applied"
    assert outcomes[1][0] == "rejected" and "duplicate" in (outcomes[1][1] or "")
    assert len(sends_issued(flow.config, flow.watch, cid)) == 1 and flow.watch.status(cid) == "sent"


def test_reject_ends_the_process_without_sending(flow: Flow) -> None:
    cid = send_email(flow.config)
    request = waiting_request(flow.config, flow.watch, cid)
    flow.review.reject(request.payload.approval_id, "bob", "customer already refunded by phone")
    flow.watch.wait_status(cid, "rejected")
    [(entry, _)] = flow.watch.decisions(cid)
    assert entry.payload.outcome == "applied"
    assert sends_issued(flow.config, flow.watch, cid) == []  # terminal: nothing can be issued any more


def test_edit_is_sent_only_after_it_passes_the_guard(flow: Flow) -> None:
    cid = send_email(flow.config)
    request = waiting_request(flow.config, flow.watch, cid)
    order_id = Draft.model_validate_json(request.payload.proposal).order_id
    flow.review.edit(
        request.payload.approval_id, "alice", "Sorry! Refund on its way."
    )  # too short, no order ID
    [(outcome, reason, status)] = flow.watch.wait_decisions(cid, 1)
    assert outcome == "rejected" and "fails the guard" in (reason or "") and status == "waiting_for_approval"

    edited = (
        f"Dear Ana,\nour apologies: order {order_id} was lost by the carrier. We refund the shipping.\nBest"
    )
    flow.review.edit(request.payload.approval_id, "alice", edited, force=True)
    flow.watch.wait_status(cid, "sent")
    flow.watch.wait("the SendEmail to be answered", lambda: len(flow.steps.sends(cid)) == 1)
    assert [s.payload.body for s in flow.steps.sends(cid)] == [edited]


def test_bad_decisions_are_journalled_as_refused_and_change_nothing(flow: Flow) -> None:
    cid = send_email(flow.config)
    request = waiting_request(flow.config, flow.watch, cid)
    p = request.payload

    def signed(**overrides: Any) -> ApprovalDecided:
        values: dict[str, Any] = {
            "correlation_id": cid,
            "approval_id": p.approval_id,
            "decision": "approve",
            "reviewer": "alice",
            "draft_hash": p.draft_hash,
            "policy_version": p.policy_version,
            "key_id": "k1",
            "secret": SECRET,
        }
        return build_decision(**{**values, **overrides})

    good = signed()
    # Its own event ID: the PM remembers refused event IDs too, so a copy of `good` would block it.
    unsigned = signed()
    bad = {
        "unsigned": unsigned.model_copy(
            update={"payload": unsigned.payload.model_copy(update={"signature": "", "key_id": ""})}
        ),
        "bad signature": signed(secret="guessed"),
        "unknown key id": signed(key_id="k-old"),
        "reviewer not allowed": signed(reviewer="mallory"),
        "draft hash mismatch": signed(draft_hash="0" * 64),
        "policy version mismatch": signed(policy_version="refund-v1"),
        "unknown approval_id": signed(approval_id="appr-nope"),
        "expired": signed(now=p.deadline + timedelta(seconds=1)),
    }
    stranger = signed(correlation_id=f"<nobody-{uuid.uuid4().hex[:6]}@example.net>")
    for event in [*bad.values(), stranger]:
        flow.review.publish(event)

    outcomes = flow.watch.wait_decisions(cid, len(bad))
    for expected, (outcome, reason, status) in zip(bad, outcomes, strict=True):
        assert outcome == "rejected", expected
        assert reason is not None and reason.startswith(expected), (expected, reason)
        assert status == "waiting_for_approval", expected
    flow.watch.wait(
        "the stranger's decision in the DLQ",
        lambda: any(d.correlation_id == stranger.correlation_id for d in flow.watch.dlq),
    )
    assert sends_issued(flow.config, flow.watch, cid) == []

    # The state was untouched: the real decision still applies, once.
    flow.review.publish(good)
    flow.watch.wait_status(cid, "sent")
    late = signed(reviewer="bob")
    flow.review.publish(late)
    outcomes = flow.watch.wait_decisions(cid, len(bad) + 2)
    assert outcomes[-2][0] == "applied"
    assert outcomes[-1][0] == "rejected" and outcomes[-1][1] is not None
    assert outcomes[-1][1].startswith(("duplicate", "late"))
    assert len(sends_issued(flow.config, flow.watch, cid)) == 1


# ---------------------------------------------------------------- deadline and restart (own PM each)


def test_deadline_reminds_then_escalates(broker: LocalBroker, tmp_path: Path) -> None:
    config = flow_config(broker, tmp_path / "state")
    watch = Watch(config)
    budgets = Budgets(approval_reminder=timedelta(seconds=1), approval_timeout=timedelta(seconds=3))
    try:
        with steps_running(config), pm_running(config, budgets):
            cid = send_email(config)
            request = waiting_request(config, watch, cid)
            watch.wait_status(cid, "escalated", timeout=20)
            record = ReviewClient(config).show(request.payload.approval_id)
            assert len(record.reminders) >= 1 and record.expired()
            ReviewClient(config).approve(request.payload.approval_id, "alice", force=True)
            [(outcome, reason, status)] = watch.wait_decisions(cid, 1)
            assert outcome == "rejected" and status == "escalated"
            assert reason is not None and reason.startswith(("late", "expired"))
            assert sends_issued(config, watch, cid) == []
    finally:
        watch.close()


def test_pm_restart_while_waiting_keeps_waiting_and_applies_a_decision_made_while_down(
    broker: LocalBroker, tmp_path: Path
) -> None:
    config = flow_config(broker, tmp_path / "state")
    watch = Watch(config)
    budgets = Budgets(approval_timeout=timedelta(minutes=10))
    try:
        with steps_running(config) as steps:
            with pm_running(config, budgets):
                cid = send_email(config)
                request = waiting_request(config, watch, cid)
            with pm_running(config, budgets):  # restarted: still waiting, nothing sent
                # Proof the restarted PM is live and restored the state: it refuses a probe
                # decision (unknown key) and journals the process as still waiting.
                probe = build_decision(
                    correlation_id=cid,
                    approval_id=request.payload.approval_id,
                    decision="approve",
                    reviewer="alice",
                    draft_hash=request.payload.draft_hash,
                    policy_version=request.payload.policy_version,
                    key_id="k-unknown",
                    secret=SECRET,
                )
                ReviewClient(config).publish(probe)
                [(outcome, reason, status)] = watch.wait_decisions(cid, 1)
                assert outcome == "rejected" and (reason or "").startswith("unknown key id")
                assert status == "waiting_for_approval" and sends_issued(config, watch, cid) == []
            # Down: the reviewer approves anyway; the decision waits on the topic, the process waits.
            published = ReviewClient(config).approve(request.payload.approval_id, "bob")
            assert published.event.event_id in {decode(m.value()).event_id for m in read_topic(config, "approvals")}
            assert journaled_status(config, cid) == "waiting_for_approval"
            with pm_running(config, budgets):
                watch.wait_status(cid, "sent")
                watch.wait("the SendEmail to be answered", lambda: len(steps.sends(cid)) == 1)
        assert [s.payload.body for s in steps.sends(cid)] == [json.loads(request.payload.proposal)["body"]]
    finally:
        watch.close()
