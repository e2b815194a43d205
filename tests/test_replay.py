"""`pm replay`: the known sequence of a scripted process, --until, --verify (pass and readable diff), what-if.

The journal is built here, not by the runtime: scripted inputs go through a definition's
`decide` (via `pm.journal.evaluate` / `build_entry`, exactly what the PM records) and the
entries are produced, keyed by correlation ID, to the test's prefixed `pm.journal`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition
from pydantic_core import to_json

from customer_email.events import (
    ClassifyEmail,
    Draft,
    DraftReply,
    EmailClassified,
    EmailClassifiedPayload,
    EmailReceived,
    EmailReceivedPayload,
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
    Step,
)
from customer_email.rules import CUSTOMER_EMAIL, Budgets, CustomerEmailProcess, EmailState
from pm.cli import main
from pm.codec import encode
from pm.config import Config
from pm.events import ApprovalDecided, ApprovalDecidedPayload, ApprovalRequested, Event, LlmCall, derive_id
from pm.journal import build_entry, evaluate, iter_journal, journal_partitions
from pm.kafka import make_consumer, make_producer
from pm.partitioner import murmur2, partition_for
from pm.process import Decision, ProcessDefinition, ProcessState
from pm.replay import Until, replay_process, what_if
from pm.replay import deployed_registry as registry

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# ---------------------------------------------------------------- test-only definitions


class AlwaysApprove(CustomerEmailProcess):
    """A rule change: every reply needs a human approval (not only refunds and high risk)."""

    def _approval_reasons(self, state: EmailState, draft: Draft) -> list[str]:
        return super()._approval_reasons(state, draft) or ["all replies are reviewed"]


ALWAYS_APPROVE = AlwaysApprove()
# Another rule change: classification may take 5 minutes instead of 2 (a different timer).
SLOW_CLASSIFY = CustomerEmailProcess(
    Budgets(step_timeouts={**Budgets().step_timeouts, Step.CLASSIFY: timedelta(minutes=5)})
)


# ---------------------------------------------------------------- scripted histories


@dataclass
class Scenario:
    correlation_id: str
    intent: str = "delivery_status"
    order_id: str = "ORD-1001"
    sender: str = "ann@example.com"


def _llm() -> LlmCall:
    return LlmCall(provider="offline", model="offline", prompt="[]", raw_output="{}")


def _order(s: Scenario) -> Order:
    return Order(
        order_id=s.order_id,
        customer_email=s.sender,
        customer_name="Ann",
        carrier="UPS",
        status="shipped",
        total_cents=5000,
        shipping_cost_cents=500,
    )


def _policy(category: str) -> RefundPolicy:
    return RefundPolicy(
        category=category,
        version=f"{category}-v3",
        refund_shipping=True,
        max_refund_cents=5000,
        max_refund_ratio=1.0,
        allowed_promises=["refund_shipping", "reship"],
        summary="test policy",
    )


def _respond(s: Scenario, cause: Event, at: datetime) -> Event | None:
    """The world's answer to a command or published event (step consumers, a reviewer)."""
    env: dict[str, Any] = {
        "event_id": derive_id(cause.event_id, "result"),
        "correlation_id": s.correlation_id,
        "causation_id": cause.event_id,
        "occurred_at": at,
    }
    p = cause.payload
    if isinstance(cause, ClassifyEmail):
        return EmailClassified(
            **env,
            payload=EmailClassifiedPayload(
                command_id=p.command_id,
                attempt=p.attempt,
                intent=s.intent,
                risk="low",
                order_id=s.order_id,
                confidence=0.9,
                llm=_llm(),
            ),
        )
    if isinstance(cause, FetchOrder):
        return OrderFetched(
            **env,
            payload=OrderFetchedPayload(
                command_id=p.command_id, attempt=p.attempt, order_id=p.order_id, found=True, order=_order(s)
            ),
        )
    if isinstance(cause, FetchRefundPolicy):
        return RefundPolicyFetched(
            **env,
            payload=RefundPolicyFetchedPayload(
                command_id=p.command_id, attempt=p.attempt, policy=_policy(p.category)
            ),
        )
    if isinstance(cause, DraftReply):
        body = (
            f"Hello Ann, your order {s.order_id} is on its way with UPS and should arrive within "
            "three days. Thank you for your patience."
        )
        draft = Draft(subject="Re: where is my order", body=body, order_id=s.order_id)
        return ReplyDrafted(
            **env,
            payload=ReplyDraftedPayload(command_id=p.command_id, attempt=p.attempt, draft=draft, llm=_llm()),
        )
    if isinstance(cause, SendEmail):
        return EmailSent(
            **env,
            payload=EmailSentPayload(
                command_id=p.command_id,
                attempt=p.attempt,
                to=p.to,
                message_id=f"<{p.command_id}@pm>",
                smtp_response="250",
            ),
        )
    if isinstance(cause, ApprovalRequested):
        return ApprovalDecided(
            **env,
            payload=ApprovalDecidedPayload(
                approval_id=p.approval_id,
                decision="approve",
                reviewer="rita",
                draft_hash=p.draft_hash,
                policy_version=p.policy_version,
                decided_at=at,
            ),
        )
    return None


@dataclass
class Journal:
    """Writes journal entries the way the PM does, from a definition's decisions."""

    config: Config
    producer: Producer
    offsets: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, list[Event]] = field(default_factory=dict)
    # Entries carry the state after them (`payload.record`) as this makes of it; None: no record.
    carry: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def record(
        self,
        definition: ProcessDefinition[Any],
        state: ProcessState | None,
        event: Event,
        now: datetime | None = None,
    ) -> Decision[Any] | None:
        """Decide `event` at `now` (default: when it occurred) and journal it with that time."""
        if state is None:
            state = definition.initial_state(event)
        now = event.occurred_at if now is None else now
        outcome = evaluate(definition, state, event, now=now)
        after = (
            outcome.decision.state if outcome.decision is not None and outcome.outcome == "applied" else state
        )
        topic = event.topic
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        entry = build_entry(
            definition,
            event,
            encode(event),
            topic=topic,
            partition=0,
            offset=offset,
            outcome=outcome,
            status=str(after.status),
            decided_at=now,
            record=None if self.carry is None else to_json({"state": self.carry(after.model_dump(mode="json"))}),
        )
        self.producer.produce(
            self.config.topic("pm.journal"), key=event.correlation_id.encode(), value=encode(entry)
        )
        self.inputs.setdefault(event.correlation_id, []).append(event)
        return outcome.decision if outcome.outcome == "applied" else None

    def run(
        self,
        scenario: Scenario,
        definition: ProcessDefinition[Any] = CUSTOMER_EMAIL,
        late: timedelta = timedelta(0),
    ) -> ProcessState:
        """Drive one process to its end: every command and approval request is answered in order.

        `late`: each input is decided that long after it occurred (it waited in Kafka).
        """
        s = scenario
        first = EmailReceived(
            event_id=derive_id(s.correlation_id, "email"),
            correlation_id=s.correlation_id,
            occurred_at=T0,
            payload=EmailReceivedPayload(
                message_id=s.correlation_id,
                sender=s.sender,
                recipient="support@shop.example",
                subject="where is my order",
                body=f"Hi, where is my order {s.order_id}?",
                received_at=T0,
            ),
        )
        queue: deque[Event] = deque([first])
        state: ProcessState | None = None
        at = T0
        while queue:
            event = queue.popleft()
            decision = self.record(definition, state, event, event.occurred_at + late)
            if state is None:
                state = definition.initial_state(event)
            if decision is None:
                continue
            state = decision.state
            for cause in (*decision.commands, *decision.publish):
                at += timedelta(seconds=1)
                answer = _respond(s, cause, at)
                if answer is not None:
                    queue.append(answer)
        assert state is not None
        self.producer.flush(10)
        return state


@pytest.fixture
def journal(topics: Config) -> Journal:
    return Journal(topics, make_producer(topics, "test-journal"))


def _cli(config: Config, *args: str) -> list[str]:
    return ["--bootstrap", config.resolved_bootstrap, "--prefix", config.topic_prefix, *args]


def _run(
    config: Config, capsys: pytest.CaptureFixture[str], command: str, *args: str
) -> tuple[int, str, str]:
    code = main([command, *_cli(config, *args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- tests


def test_murmur2_is_kafkas_and_finds_the_journal_partition(journal: Journal) -> None:
    # Reference values from Apache Kafka's UtilsTest.testMurmur2.
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}  # fmt: skip
    for data, java in cases.items():
        assert murmur2(data) == java, data
    keys = [f"<m{i}@mail.example>" for i in range(40)]
    for key in keys:
        journal.producer.produce(journal.config.topic("pm.journal"), key=key.encode(), value=b"x")
    journal.producer.flush(10)
    n = len(journal_partitions(journal.config))
    assert n > 1
    # The broker placed each key with the producer's murmur2_random partitioner: we must agree.
    consumer = make_consumer(journal.config, "t", "t-murmur", **{"enable.partition.eof": True})
    topic = journal.config.topic("pm.journal")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(n)])
    placed: dict[str, int] = {}
    eof: set[int] = set()
    while len(eof) < n:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        partition, raw_key = msg.partition(), msg.key()
        assert partition is not None
        if msg.error():
            eof.add(partition)
            continue
        assert isinstance(raw_key, bytes)
        placed[raw_key.decode()] = partition
    consumer.close()
    assert placed == {k: partition_for(k.encode(), n) for k in keys}


def test_replay_prints_the_known_sequence(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    cid = "<delivery-1@mail.example>"
    final = journal.run(Scenario(cid))
    journal.run(Scenario("<other@mail.example>"))  # another process in the same journal: filtered out
    assert final.status == "sent"
    code, out, _ = _run(journal.config, capsys, "replay", cid)
    assert code == 0
    events = [line.split()[2] for line in out.splitlines() if line.startswith("@")]
    assert events == [
        "EmailReceived",
        "EmailClassified",
        "OrderFetched",
        "RefundPolicyFetched",
        "ReplyDrafted",
        "EmailSent",
    ]
    commands = [
        " ".join(line.split()[1:4]) for line in out.splitlines() if line.strip().startswith("command ")
    ]
    assert commands == [
        "ClassifyEmail step=classify attempt=1",
        "FetchOrder step=fetch-order attempt=1",
        "FetchRefundPolicy step=fetch-refund-policy attempt=1",
        "DraftReply step=draft-reply attempt=1",
        "SendEmail step=send-email attempt=1",
    ]
    assert 'stage: "classifying" -> "fetching"' in out
    assert 'status: "running" -> "sent"' in out
    assert "timer timeout:classify due 2026-03-02T09:02:00+00:00" in out
    assert out.rstrip().splitlines()[-1].startswith("    sent_message_id:")  # final state printed last

    code, out, _ = _run(journal.config, capsys, "replay", cid, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["type"] for x in lines[:-1]] == events
    assert lines[0]["changes"]["stage"] == {"before": "received", "after": "classifying"}
    assert lines[0]["commands"][0]["step"] == "classify" and lines[0]["commands"][0]["attempt"] == 1
    assert lines[0]["timers_scheduled"][0]["name"] == "timeout:classify"
    assert lines[-1]["kind"] == "state" and lines[-1]["status"] == "sent"
    assert lines[-1]["state"]["correlation_id"] == cid
    offsets = [x["offset"] for x in lines[:-1]]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def test_until_stops_and_shows_the_state_there(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    cid = "<until-1@mail.example>"
    journal.run(Scenario(cid))
    records = list(replay_process(journal.config, cid, registry()).steps)
    fetched = records[2]  # OrderFetched: the order is in, the policy not yet
    assert fetched.event_type == "OrderFetched"

    def state_at(until: str) -> dict[str, Any]:
        code, out, _ = _run(journal.config, capsys, "replay", cid, "--json", "--until", until)
        assert code == 0
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-2]["event_id"] == fetched.event_id  # the last event applied
        return dict(lines[-1])

    for until in (str(fetched.offset), fetched.event_id, fetched.occurred_at.isoformat()):
        last = state_at(until)
        assert last["until"] is not None
        assert last["status"] == "running"
        assert last["state"]["stage"] == "fetching"
        assert last["state"]["order"]["order_id"] == "ORD-1001" and last["state"]["policy"] is None

    code, out, _ = _run(journal.config, capsys, "replay", cid, "--until", fetched.event_id)
    assert out.splitlines()[-1 - len(EmailState.model_fields)].startswith(
        f"state at event {fetched.event_id}"
    )
    code, _, err = _run(journal.config, capsys, "replay", cid, "--until", "no-such-event")
    assert code == 2 and "not in the journal" in err


def test_verify_passes_on_the_unchanged_definition(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = "<verify-ok@mail.example>"
    journal.run(Scenario(cid, intent="refund_request"))  # through an approval
    code, out, err = _run(journal.config, capsys, "replay", cid, "--verify")
    assert code == 0, out
    assert "DIFF" not in out and "ApprovalDecided" in out
    assert "verify: ok, 7 decisions re-run" in err


def test_verify_checks_the_record_each_entry_carries(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    # The record a rebuild takes instead of re-deciding must be what re-deciding gives.
    journal.carry = lambda state: state
    journal.run(Scenario("<record-ok@mail.example>", intent="refund_request"))
    code, out, err = _run(journal.config, capsys, "replay", "<record-ok@mail.example>", "--verify")
    assert code == 0 and "verify: ok, 7 decisions re-run" in err, out
    journal.carry = lambda state: {**state, "reason": "tampered"}
    journal.run(Scenario("<record-bad@mail.example>"))
    code, out, _ = _run(journal.config, capsys, "replay", "<record-bad@mail.example>", "--verify")
    assert code == 1
    assert "DIFF record:" in out and "reason: recorded 'tampered', now None" in out


def test_verify_re_decides_with_the_recorded_decision_time(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = "<verify-late@mail.example>"
    journal.run(Scenario(cid, intent="refund_request"), late=timedelta(minutes=10))
    code, out, err = _run(journal.config, capsys, "replay", cid, "--verify")
    # Timers and the approval deadline count from the decision time: re-deciding with the input's
    # occurred_at instead would show them all ten minutes early.
    assert code == 0, out
    assert "verify: ok, 7 decisions re-run" in err
    assert "(600.0s after it occurred)" in out
    code, out, _ = _run(journal.config, capsys, "replay", cid, "--json")
    first = json.loads(out.splitlines()[0])
    assert first["type"] == "EmailReceived"
    assert first["decided_at"] == "2026-03-02T09:10:00+00:00"
    assert first["timers_scheduled"][0]["due_at"] == "2026-03-02T09:12:00+00:00"


def test_verify_fails_with_a_readable_diff_on_a_changed_timeout(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = "<verify-timeout@mail.example>"
    journal.run(Scenario(cid), SLOW_CLASSIFY)  # recorded by a build whose classify timeout was 5 min
    code, out, err = _run(journal.config, capsys, "replay", cid, "--verify")
    assert code == 1
    assert "DIFF timers_scheduled:" in out
    assert "~ timer timeout:classify" in out
    assert "due_at: recorded '2026-03-02T09:05:00Z', now '2026-03-02T09:02:00Z'" in out
    assert "1 difference(s)" in err  # only the classify timer; everything else decides as recorded


def test_verify_fails_with_a_readable_diff_on_a_changed_route(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = "<verify-route@mail.example>"
    journal.run(Scenario(cid), ALWAYS_APPROVE)  # recorded: the reply went through an approval
    code, out, _ = _run(journal.config, capsys, "replay", cid, "--verify")
    assert code == 1
    assert "DIFF commands:" in out and "+ SendEmail send-email#1" in out
    assert "DIFF published:" in out and "- ApprovalRequested" in out
    assert "status: recorded 'waiting_for_approval', now 'running'" in out


def test_verify_all_counts_processes_and_names_the_differing(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    journal.run(Scenario("<a@mail.example>"))
    journal.run(Scenario("<b@mail.example>", intent="refund_request"))
    journal.run(Scenario("<c@mail.example>", intent="other"))  # escalated at once
    code, out, _ = _run(journal.config, capsys, "replay", "--all", "--verify")
    assert code == 0, out
    assert out.strip().endswith(
        "checked 3 processes, 15 events (15 decisions re-run): 0 differ, 0 could not be replayed"
    )

    journal.run(Scenario("<d@mail.example>"), SLOW_CLASSIFY)
    code, out, _ = _run(journal.config, capsys, "replay", "--all", "--verify")
    assert code == 1
    assert "DIFFERS <d@mail.example>" in out and "DIFFERS <a@mail.example>" not in out
    assert "checked 4 processes, 21 events (21 decisions re-run): 1 differ" in out


def test_duplicate_journal_entries_are_skipped(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    cid = "<dup@mail.example>"
    journal.run(Scenario(cid, intent="other"))
    # An aborted transaction's copy (visible on brokers that ignore read_committed): same input again.
    first = journal.inputs[cid][0]
    journal.record(CUSTOMER_EMAIL, None, first)
    journal.producer.flush(10)
    code, out, err = _run(journal.config, capsys, "replay", cid, "--verify")
    assert code == 0, out
    assert sum("[duplicate, skipped]" in line for line in out.splitlines()) == 1
    assert 'status: "running" -> "escalated"' in out


def test_what_if_counts(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    journal.run(Scenario("<w1@mail.example>"))  # delivery status: sent without approval
    journal.run(Scenario("<w2@mail.example>"))  # likewise
    journal.run(Scenario("<w3@mail.example>", intent="refund_request"))  # already needed approval
    journal.run(Scenario("<w4@mail.example>", intent="other"))  # escalated before any draft

    report = what_if(journal.config, ALWAYS_APPROVE)
    assert report.processes == 4
    assert sorted(r.correlation_id for r in report.results) == ["<w1@mail.example>", "<w2@mail.example>"]
    assert report.route_changed == 2
    assert dict(report.terminal_changed) == {("sent", "waiting_for_approval"): 2}
    assert dict(report.steps_added) == {"approval": 2}
    assert dict(report.steps_removed) == {"send-email": 2}
    w1 = next(r for r in report.results if r.correlation_id == "<w1@mail.example>")
    assert w1.recorded_route[w1.first_divergence or 0] == "SendEmail(send-email#1)"
    assert w1.new_route[w1.first_divergence or 0] == "ApprovalRequested"

    code, out, _ = _run(
        journal.config, capsys, "replay", "--all", "--definition", f"{__name__}:ALWAYS_APPROVE"
    )
    assert code == 0
    assert "processes differing: 2 of 4" in out
    assert "different route: 2" in out
    assert "sent -> waiting_for_approval: 2" in out
    assert "step now run: approval: 2" in out and "step no longer run: send-email: 2" in out

    code, out, _ = _run(
        journal.config, capsys, "replay", "--all", "--definition", f"{__name__}:ALWAYS_APPROVE", "--json"
    )
    data = json.loads(out)
    assert data["differing"] == 2 and data["steps_removed"] == {"send-email": 2}

    # The same definition as deployed: nothing differs.
    same = what_if(journal.config, CUSTOMER_EMAIL)
    assert same.processes == 4 and same.results == []


def test_usage_errors(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(journal.config, capsys, "replay", "--all")
    assert code == 2 and "--verify or --definition" in err
    code, _, err = _run(journal.config, capsys, "replay", "--all", "--definition", "nosuchmodule:X")
    assert code == 2 and "cannot import nosuchmodule" in err
    code, _, err = _run(journal.config, capsys, "replay", "<nobody@mail.example>")
    assert code == 2 and "no journal entries" in err
    with pytest.raises(Exception, match="ISO time"):
        Until.parse("2026-13-45")


def test_journal_reader_sees_everything_written(journal: Journal) -> None:
    journal.run(Scenario("<r1@mail.example>", intent="other"))
    assert [r.event.type for r in iter_journal(journal.config)] == ["EmailReceived", "EmailClassified"]
