"""pm.testing: the kit a team tests its own process definition with, on the real customer e-mail
process, and on a small purpose-built definition that breaks each contract rule once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_customer_email_rules import CID, T0, Run

from customer_email import CUSTOMER_EMAIL
from customer_email.events import ClassifyEmail, DraftReply, FetchOrder, FetchRefundPolicy, SendEmail, Step
from customer_email.rules import STEP_TIMEOUTS, CustomerEmailProcess, EmailState, timeout_timer
from pm.events import Event, Model, TimerFired, TimerSpec, derive_id
from pm.journal import ProcessRecord, advance, evaluate
from pm.process import Decision, ProcessDefinition, ProcessState, Status, Upcaster
from pm.testing import (
    DefinitionContract,
    Trace,
    assert_deterministic,
    check_definition,
    check_derived_ids,
    check_json_round_trip,
    check_no_clock,
    check_terminal_absorbs,
    check_timers_handled,
    feed,
    fire_due,
    run_definition,
    timer_fired,
)

# ---------------------------------------------------------------- customer e-mail scenarios


def happy_run() -> Run:
    run = Run()
    run.receive()
    run.classified()
    run.order()
    run.policy()
    run.drafted()
    run.sent()
    return run


def happy_path() -> list[Event]:
    return happy_run().inputs


def refund_with_approval() -> list[Event]:
    """Refund draft -> approval requested -> one reminder -> approved -> sent."""
    run = Run()
    run.to_approval()
    run.fire("approval-reminder")
    assert run.s.approval is not None
    run.decide_approval("approve", decided_at=run.s.approval.requested_at + timedelta(hours=5))
    run.sent()
    return run.inputs


def waiting_for_approval() -> list[Event]:
    run = Run()
    run.to_approval()
    return run.inputs


def escalation() -> list[Event]:
    """Nobody decides: every reminder fires, then the deadline escalates (its reason quotes a time)."""
    trace = run_definition(CUSTOMER_EMAIL, waiting_for_approval())
    return list(fire_due(CUSTOMER_EMAIL, trace, T0 + timedelta(days=2)).inputs)


class TestCustomerEmailContract(DefinitionContract):
    def definition(self) -> ProcessDefinition[Any]:
        return CUSTOMER_EMAIL

    def scenarios(self) -> list[list[Event]]:
        return [happy_path(), refund_with_approval(), escalation()]


def test_scenarios_end_where_intended() -> None:
    ends = [run_definition(CUSTOMER_EMAIL, s).state for s in TestCustomerEmailContract().scenarios()]
    assert [s.status for s in ends] == ["sent", "sent", Status.ESCALATED]
    assert ends[2].reason is not None and "no approval decision by" in ends[2].reason


# ---------------------------------------------------------------- running a definition


def test_run_definition_decides_like_the_rules_runner() -> None:
    run = happy_run()
    trace = run_definition(CUSTOMER_EMAIL, run.inputs)
    assert list(trace.decisions) == run.decisions
    assert trace.state == run.s and trace.state.status == "sent"
    assert len(trace.states) == len(trace.decided_at) == len(trace.inputs) == 6
    assert [type(c) for c in trace.commands] == [
        ClassifyEmail,
        FetchOrder,
        FetchRefundPolicy,
        DraftReply,
        SendEmail,
    ]
    assert trace.commands_of(FetchOrder) == (trace.commands[1],)
    assert isinstance(trace.last_command(), SendEmail)
    assert trace.published == () and trace.rejections == () and trace.pending == ()
    assert trace.scheduled[0].timer_id == timeout_timer(CID, Step.CLASSIFY, 1)
    assert set(trace.cancelled) == {t.timer_id for t in trace.scheduled}  # every timeout answered


def test_a_duplicate_event_id_is_ignored() -> None:
    inputs = happy_path()
    trace = run_definition(CUSTOMER_EMAIL, [*inputs[:2], inputs[1], *inputs[2:]])
    assert trace.decisions[2] is None and trace.states[2] == trace.states[1]
    assert len(trace.commands) == 5 and trace.state.status == "sent"


def test_a_rejection_is_recorded_and_keeps_the_state() -> None:
    run = Run()
    run.to_approval()
    before = run.s
    run.decide_approval(draft_hash="0" * 64)
    trace = run_definition(CUSTOMER_EMAIL, run.inputs)
    index = len(run.inputs) - 1
    assert trace.rejections == (
        (index, "draft hash mismatch: the decision is for another version of the draft"),
    )
    assert (
        trace.state == before and trace.commands == run_definition(CUSTOMER_EMAIL, run.inputs[:-1]).commands
    )


def test_a_rejection_that_changes_the_state_fails() -> None:
    with pytest.raises(AssertionError, match="rejected .* changes the state"):
        run_definition(Toy(bad_rejection=True), [opened(), opened("t-2")])


def test_the_first_input_must_start_the_process() -> None:
    inputs = happy_path()
    with pytest.raises(AssertionError, match="does not start a customer-email process"):
        run_definition(CUSTOMER_EMAIL, inputs[1:])
    other = inputs[1].model_copy(update={"correlation_id": "<other@x>"})
    with pytest.raises(AssertionError, match="a trace follows one process"):
        run_definition(CUSTOMER_EMAIL, [inputs[0], other])


def test_now_is_fixed_or_per_input() -> None:
    received = happy_path()[:1]
    late = T0 + timedelta(minutes=10)
    fixed = run_definition(CUSTOMER_EMAIL, received, now=late)
    per_input = run_definition(CUSTOMER_EMAIL, received, now=lambda e: e.occurred_at + timedelta(minutes=10))
    for trace in (fixed, per_input):
        assert trace.decided_at == (late,)
        assert trace.scheduled[0].due_at == late + STEP_TIMEOUTS[Step.CLASSIFY]  # counted from `now`


def test_fire_due_fires_live_timers_in_due_order() -> None:
    received = run_definition(CUSTOMER_EMAIL, happy_path()[:1])
    first = fire_due(CUSTOMER_EMAIL, received, T0 + timedelta(minutes=3))
    assert len(first.inputs) == 2 and [t.name for t in first.pending] == ["timeout:classify"]
    fired = first.inputs[1]
    assert isinstance(fired, TimerFired) and fired.payload.timer_id == timeout_timer(CID, Step.CLASSIFY, 1)
    assert fired.event_id == derive_id(fired.payload.timer_id, "fired")  # as pm.timers derives it
    assert first.decided_at[1] == T0 + STEP_TIMEOUTS[Step.CLASSIFY]
    done = fire_due(CUSTOMER_EMAIL, first, T0 + timedelta(days=1))
    assert [c.payload.attempt for c in done.commands_of(ClassifyEmail)] == [1, 2, 3]
    assert done.state.status is Status.ESCALATED and done.pending == ()
    assert fire_due(CUSTOMER_EMAIL, done, T0 + timedelta(days=9)) == done  # nothing left to fire


def test_feed_continues_a_trace() -> None:
    inputs = happy_path()
    assert feed(CUSTOMER_EMAIL, run_definition(CUSTOMER_EMAIL, inputs[:3]), inputs[3:]) == run_definition(
        CUSTOMER_EMAIL, inputs
    )


def _fold(inputs: list[Event]) -> ProcessRecord:
    """The runtime's own fold (pm.journal) of the same inputs, to hold the kit's timer book to it."""
    record: ProcessRecord | None = None
    for offset, event in enumerate(inputs):
        state = record.state if record is not None else CUSTOMER_EMAIL.initial_state(event)
        outcome = evaluate(CUSTOMER_EMAIL, state, event, now=event.occurred_at)
        record = advance(CUSTOMER_EMAIL, record, state, event, outcome, offset)
    assert record is not None
    return record


@pytest.mark.parametrize(
    "inputs",
    [happy_path(), refund_with_approval(), waiting_for_approval(), escalation()],
    ids=["sent", "approved", "waiting", "escalated"],
)
def test_pending_timers_match_the_runtime_fold(inputs: list[Event]) -> None:
    trace = run_definition(CUSTOMER_EMAIL, inputs)
    record = _fold(inputs)
    assert {t.timer_id: t.name for t in trace.pending} == {k: name for k, (_, name) in record.timers.items()}
    assert record.state == trace.state


def test_the_contract_rejects_a_subclass_without_hooks() -> None:
    with pytest.raises(NotImplementedError, match=r"scenarios\(\) must return"):
        DefinitionContract().test_deterministic()


# ---------------------------------------------------------------- a small definition that breaks each rule


class TicketPayload(Model):
    subject: str


class Opened(Event):
    TYPE = "TicketOpened"
    payload: TicketPayload


class Closed(Event):
    TYPE = "TicketClosed"
    payload: TicketPayload


class PingPayload(Model):
    command_id: str
    attempt: int


class Ping(Event):
    TYPE = "Ping"
    payload: PingPayload


class TicketState(ProcessState):
    pings: int = 0
    timers: dict[str, str] = {}  # live timer_id -> name
    note: Any = None  # `Any` lets the lossy toy keep a tuple, which comes back from JSON as a list


DEADLINE = timedelta(hours=1)


@dataclass
class Toy:
    """Opened -> Ping + a deadline timer; Closed -> sent; the deadline firing -> escalated.

    Each flag breaks one rule of the contract.
    """

    uuid_ids: bool = False  # derived IDs
    wall_clock: bool = False  # no clock
    from_occurred_at: bool = False  # no clock: the deadline counts from when the input happened
    busy_when_terminal: bool = False  # terminal absorbs
    raise_on_stale: bool = False  # timers handled
    counter: bool = False  # determinism (hidden state in the definition object)
    lossy_state: bool = False  # JSON round trip
    bad_rejection: bool = False  # a rejection must keep the state
    calls: int = 0

    name: str = "ticket"
    version: int = 1
    state_type: type[TicketState] = TicketState
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)

    def starts(self, event: Event) -> bool:
        return isinstance(event, Opened)

    def initial_state(self, event: Event) -> TicketState:
        return TicketState(correlation_id=event.correlation_id)

    def decide(self, state: TicketState, event: Event, now: datetime) -> Decision[TicketState]:
        if self.raise_on_stale and isinstance(event, TimerFired) and not self._live(state, event):
            raise KeyError(event.payload.timer_id)
        if state.terminal:
            return self._ping(state, event, now) if self.busy_when_terminal else Decision(state)
        if isinstance(event, Opened):
            return self._ping(state, event, now) if state.pings == 0 else self._reject(state, "already open")
        if isinstance(event, Closed):
            return self._end(state, "sent")
        if isinstance(event, TimerFired):
            return self._on_timer(state, event)
        return self._reject(state, f"{event.type} is not a ticket input")

    def _ping(self, state: TicketState, event: Event, now: datetime) -> Decision[TicketState]:
        self.calls += 1
        n = state.pings + 1
        cid = str(uuid.uuid4()) if self.uuid_ids else derive_id(state.correlation_id, "ping", n)
        timer_id = derive_id(state.correlation_id, "deadline", n)
        start = event.occurred_at if self.from_occurred_at else now
        due = (datetime.now(UTC) if self.wall_clock else start) + DEADLINE
        ping = Ping(
            event_id=cid,
            correlation_id=state.correlation_id,
            causation_id=event.event_id,
            occurred_at=now,
            payload=PingPayload(command_id=cid, attempt=self.calls if self.counter else n),
        )
        after = state.model_copy(
            update={
                "pings": n,
                "timers": {timer_id: "deadline"},
                "note": ("pinged", n) if self.lossy_state else None,
            }
        )
        return Decision(
            after, commands=(ping,), schedule=(TimerSpec(timer_id=timer_id, name="deadline", due_at=due),)
        )

    def _on_timer(self, state: TicketState, event: TimerFired) -> Decision[TicketState]:
        if not self._live(state, event):
            return Decision(state)  # stale
        return self._end(state, Status.ESCALATED)

    @staticmethod
    def _live(state: TicketState, event: TimerFired) -> bool:
        return state.timers.get(event.payload.timer_id) == event.payload.name

    def _end(self, state: TicketState, status: Status) -> Decision[TicketState]:
        after = state.model_copy(update={"status": status, "timers": {}})
        return Decision(after, cancel=tuple(state.timers))

    def _reject(self, state: TicketState, reason: str) -> Decision[TicketState]:
        after = state.model_copy(update={"pings": 99}) if self.bad_rejection else state
        return Decision(after, rejection=reason)


TICKET = "ticket-1"


def opened(event_id: str = "t-1") -> Opened:
    return Opened(
        event_id=event_id, correlation_id=TICKET, occurred_at=T0, payload=TicketPayload(subject="help")
    )


def closed() -> Closed:
    at = T0 + timedelta(minutes=5)
    return Closed(
        event_id="t-close", correlation_id=TICKET, occurred_at=at, payload=TicketPayload(subject="done")
    )


def ticket_scenarios() -> list[list[Event]]:
    """Closed in time (the deadline goes stale), and left open until the deadline escalates."""
    left_open = fire_due(Toy(), run_definition(Toy(), [opened()]), T0 + timedelta(days=1))
    return [[opened(), closed()], list(left_open.inputs)]


class TestTicketContract(DefinitionContract):
    """The well-behaved toy passes the whole contract: the violations below are the flags alone."""

    def definition(self) -> ProcessDefinition[Any]:
        return Toy()

    def scenarios(self) -> list[list[Event]]:
        return ticket_scenarios()


Check = Callable[..., object]

VIOLATIONS: list[tuple[str, Check, str]] = [
    ("uuid_ids", check_derived_ids, "derived IDs: .* looks like a uuid4"),
    ("wall_clock", check_no_clock, "no clock: .*schedule\\[0\\]\\.due_at"),
    ("from_occurred_at", check_no_clock, "no clock: input #0 .* later schedules 'deadline' at .*from `now`"),
    ("busy_when_terminal", check_terminal_absorbs, "terminal absorbs: the process is sent, yet a late"),
    (
        "raise_on_stale",
        check_timers_handled,
        "timers handled: firing stale timer 'deadline' .* raised KeyError",
    ),
    ("counter", assert_deterministic, "determinism: a second run decides differently .*payload.*attempt"),
    (
        "lossy_state",
        check_json_round_trip,
        "JSON round trip: the state after input #0 .* loads back different",
    ),
]


@pytest.mark.parametrize(("flag", "check", "message"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_each_rule_catches_its_violation(flag: str, check: Check, message: str) -> None:
    scenario = [opened(), closed()]
    check(Toy(), scenario)  # the well-behaved toy passes this very check
    flags: dict[str, Any] = {flag: True}
    with pytest.raises(AssertionError, match=message):
        check(Toy(**flags), scenario)


def test_the_contract_suite_names_the_scenario() -> None:
    class Broken(TestTicketContract):
        def definition(self) -> ProcessDefinition[Any]:
            return Toy(raise_on_stale=True)

    with pytest.raises(AssertionError, match="scenario #0: timers handled"):
        Broken().test_every_timer_handled()
    Broken().test_deterministic()  # the other rules still hold for that toy


def test_uuid_ids_also_break_determinism_and_stale_raise_breaks_nothing_else() -> None:
    scenario = [opened(), closed()]
    with pytest.raises(AssertionError, match="determinism"):
        assert_deterministic(Toy(uuid_ids=True), scenario)
    for check in (assert_deterministic, check_derived_ids, check_no_clock, check_json_round_trip):
        check(Toy(raise_on_stale=True), scenario)


def test_check_definition_runs_every_rule() -> None:
    for scenario in ticket_scenarios():
        check_definition(Toy(), scenario)
    with pytest.raises(AssertionError, match="terminal absorbs"):
        check_definition(Toy(busy_when_terminal=True), ticket_scenarios()[0])


def test_timer_fired_is_the_runtimes() -> None:
    spec = run_definition(Toy(), [opened()]).pending[0]
    fired = timer_fired(spec, TICKET)
    assert (fired.event_id, fired.causation_id, fired.occurred_at) == (
        derive_id(spec.timer_id, "fired"),
        spec.timer_id,
        T0 + DEADLINE,
    )
    trace = run_definition(Toy(), [opened(), fired])
    assert isinstance(trace, Trace) and trace.state.status is Status.ESCALATED and not trace.pending


def test_no_clock_catches_timeouts_counted_from_occurred_at_in_the_real_process() -> None:
    class FromOccurredAt(CustomerEmailProcess):
        def decide(self, state: EmailState, event: Event, now: datetime) -> Decision[EmailState]:
            return super().decide(state, event, event.occurred_at)  # the bug pm/process.py warns about

    check_no_clock(CUSTOMER_EMAIL, happy_path())
    with pytest.raises(AssertionError, match="no clock: input #0 \\(EmailReceived\\) .* 'timeout:classify'"):
        check_no_clock(FromOccurredAt(), happy_path())
