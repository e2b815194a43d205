"""pm.patterns on a tiny process of its own: two steps fanned out, retried, timed out, fanned in.

Pure: `decide` is called directly, no broker. The process below uses only pm.patterns (plus the
envelope `Event`, `TimerFired` and `ProcessState` statuses), as a new process would.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pm.events import Event, Model, TimerFired, TimerPayload, TimerSpec, command_id, derive_id
from pm.patterns import (
    RETRY,
    TIMEOUT,
    Effects,
    StepBudgets,
    StepState,
    all_in,
    answered,
    await_deadline,
    awaiting,
    cancel_timers,
    escalate,
    finish,
    issue,
    parse_timer,
    retry_later,
    set_reminder,
    spend_retry,
    take_timer,
    timed_out,
    timer_id,
    timer_name,
)
from pm.process import Decision, Status, Upcaster

# ---------------------------------------------------------------- the process: sum two looked-up numbers

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CID = "sum-1"
SUMMED = "summed"  # the outcome this process names when it ends well


class Part(StrEnum):
    A = "a"
    B = "b"


BUDGETS = StepBudgets(
    step_timeouts={Part.A: timedelta(seconds=30), Part.B: timedelta(seconds=60)},
    max_retries={Part.A: 1, Part.B: 0},
    retry_backoff=timedelta(seconds=5),
    retry_backoff_max=timedelta(seconds=20),
)


class StartPayload(Model):
    pass


class LookUpPayload(Model):
    command_id: str
    attempt: int
    step: str


class AnswerPayload(Model):
    command_id: str
    step: str
    value: int | None = None  # None: the step failed
    retryable: bool = False


class Start(Event):
    TYPE = "SumStart"
    payload: StartPayload


class LookUp(Event):
    TYPE = "SumLookUp"
    payload: LookUpPayload


class Answer(Event):
    TYPE = "SumAnswer"
    payload: AnswerPayload


class SumState(StepState):
    a: int | None = None
    b: int | None = None
    total: int | None = None


def over(state: SumState) -> bool:
    return state.status != Status.RUNNING  # escalated or summed (a named outcome is terminal too)


class SumProcess:
    name = "sum"
    version = 1
    state_type = SumState
    upcasters: Mapping[int, Upcaster] = {}

    def starts(self, event: Event) -> bool:
        return isinstance(event, Start)

    def initial_state(self, event: Event) -> SumState:
        return SumState(correlation_id=event.correlation_id)

    def decide(self, state: SumState, event: Event, now: datetime) -> Decision[SumState]:
        if over(state):
            return Decision(state)
        fx = Effects(event, now)
        if isinstance(event, Start):
            state = self._issue(state, Part.A, fx)
            state = self._issue(state, Part.B, fx)
        elif isinstance(event, TimerFired):
            state = self._on_timer(state, event.payload, fx)
        elif isinstance(event, Answer):
            p = event.payload
            if not awaiting(state, p.step, p.command_id):
                return Decision(state)  # a late answer of an older attempt
            state = answered(state, p.step, fx)
            if p.value is None:
                retried = spend_retry(state, p.step, BUDGETS.max_retries[p.step]) if p.retryable else None
                if retried is None:
                    return fx.decision(escalate(state, f"{p.step} failed", fx))
                return fx.decision(retry_later(retried, p.step, BUDGETS.backoff(retried.retries[p.step]), fx))
            state = state.model_copy(update={p.step: p.value})
            if all_in(state.a, state.b):  # fan in, whichever answered last
                assert state.a is not None and state.b is not None
                state = finish(state, SUMMED, None, fx, total=state.a + state.b)
        return fx.decision(state)

    def _issue(self, state: SumState, step: str, fx: Effects) -> SumState:
        def build(cmd_id: str, attempt: int) -> Event:
            return LookUp(
                **fx.envelope(cmd_id), payload=LookUpPayload(command_id=cmd_id, attempt=attempt, step=step)
            )

        return issue(state, step, build, BUDGETS.step_timeouts[step], fx)

    def _on_timer(self, state: SumState, fired: TimerPayload, fx: Effects) -> SumState:
        live = take_timer(state, fired.timer_id, fired.name)
        if live is None:
            return state  # stale
        kind, step = parse_timer(fired.name)
        if kind == RETRY:
            return self._issue(live, step, fx)
        assert kind == TIMEOUT
        live = timed_out(live, step)
        retried = spend_retry(live, step, BUDGETS.max_retries[step])
        if retried is None:
            return escalate(live, f"{step} timed out", fx)
        return self._issue(retried, step, fx)


SUM = SumProcess()

# ---------------------------------------------------------------- driving it


class Run:
    def __init__(self) -> None:
        self.state = SUM.initial_state(self.start())
        self.specs: dict[str, TimerSpec] = {}
        self.n = 0

    def start(self) -> Start:
        return Start(event_id="start", correlation_id=CID, occurred_at=T0, payload=StartPayload())

    def feed(self, event: Event, now: datetime) -> Decision[SumState]:
        decision = SUM.decide(self.state, event, now)
        self.state = decision.state
        self.specs.update({t.timer_id: t for t in decision.schedule})
        return decision

    def answer(
        self,
        step: str,
        value: int | None,
        *,
        attempt: int | None = None,
        retryable: bool = False,
        seconds: int = 1,
    ) -> Decision[SumState]:
        self.n += 1
        cmd_id = command_id(CID, step, attempt or self.state.attempts[step])
        payload = AnswerPayload(command_id=cmd_id, step=step, value=value, retryable=retryable)
        at = T0 + timedelta(seconds=seconds)
        return self.feed(
            Answer(event_id=f"answer-{self.n}", correlation_id=CID, occurred_at=at, payload=payload), at
        )

    def fire(self, tid: str) -> Decision[SumState]:
        spec = self.specs[tid]
        payload = TimerPayload(timer_id=tid, name=spec.name, due_at=spec.due_at)
        fired = TimerFired(
            event_id=f"fired-{tid}", correlation_id=CID, occurred_at=spec.due_at, payload=payload
        )
        return self.feed(fired, spec.due_at)


def tid(name: str, attempt: int) -> str:
    return derive_id(CID, "timer", name, attempt)


# ---------------------------------------------------------------- tests


def test_issue_sends_each_step_with_a_timeout_timer() -> None:
    run = Run()
    d = run.feed(run.start(), T0)
    assert [c.event_id for c in d.commands] == [command_id(CID, "a", 1), command_id(CID, "b", 1)]
    assert [(c.payload.attempt, c.causation_id, c.occurred_at) for c in d.commands] == [(1, "start", T0)] * 2
    assert d.schedule == (
        TimerSpec(timer_id=tid("timeout:a", 1), name="timeout:a", due_at=T0 + timedelta(seconds=30)),
        TimerSpec(timer_id=tid("timeout:b", 1), name="timeout:b", due_at=T0 + timedelta(seconds=60)),
    )
    s = d.state
    assert s.attempts == {"a": 1, "b": 1} and s.retries == {}
    assert s.pending == {"a": command_id(CID, "a", 1), "b": command_id(CID, "b", 1)}
    assert s.timers == {tid("timeout:a", 1): "timeout:a", tid("timeout:b", 1): "timeout:b"}
    # A StrEnum step is stored as its plain value: the state is JSON, and equal after a round trip.
    assert all(type(k) is str for k in [*s.attempts, *s.pending])
    assert SumState.model_validate_json(s.model_dump_json()) == s


def test_retryable_failure_backs_off_then_issues_the_next_attempt() -> None:
    run = Run()
    run.feed(run.start(), T0)
    d = run.answer("a", None, retryable=True, seconds=2)
    assert d.commands == () and d.cancel == (tid("timeout:a", 1),)
    due = T0 + timedelta(seconds=2) + BUDGETS.backoff(1)
    assert d.schedule == (TimerSpec(timer_id=tid("retry:a", 2), name="retry:a", due_at=due),)
    assert d.state.retries == {"a": 1} and "a" not in d.state.pending and d.state.status == Status.RUNNING

    d = run.fire(tid("retry:a", 2))
    (cmd,) = d.commands
    assert cmd.event_id == command_id(CID, "a", 2) and cmd.payload.attempt == 2
    (timeout,) = d.schedule
    assert timeout.timer_id == tid("timeout:a", 2) and timeout.due_at == due + timedelta(seconds=30)
    assert run.state.pending["a"] == command_id(CID, "a", 2)

    # The first attempt's late answer, and its timeout firing, change nothing.
    before = run.state
    assert run.answer("a", 7, attempt=1) == Decision(before)
    assert run.fire(tid("timeout:a", 1)) == Decision(before)


def test_escalates_once_the_retry_budget_is_spent_and_cancels_every_timer() -> None:
    run = Run()
    run.feed(run.start(), T0)
    run.answer("a", None, retryable=True)
    run.fire(tid("retry:a", 2))
    d = run.answer("a", None, retryable=True)  # budget of a: one retry, used
    assert d.state.status == Status.ESCALATED and d.state.reason == "a failed"
    assert d.cancel == (tid("timeout:a", 2), tid("timeout:b", 1))
    assert d.state.timers == {} and d.state.pending == {} and d.commands == () and d.schedule == ()
    # Over: anything else is ignored.
    assert run.answer("b", 1, attempt=1) == Decision(d.state)


def test_a_non_retryable_failure_and_a_timeout_past_the_budget_escalate() -> None:
    run = Run()
    run.feed(run.start(), T0)
    assert run.answer("a", None, retryable=False).state.reason == "a failed"

    run = Run()
    run.feed(run.start(), T0)
    d = run.fire(tid("timeout:a", 1))  # a has one retry: issued again
    assert [c.event_id for c in d.commands] == [command_id(CID, "a", 2)] and d.state.retries == {"a": 1}
    d = run.fire(tid("timeout:b", 1))  # b has none
    assert d.state.status == Status.ESCALATED and d.state.reason == "b timed out"
    assert d.cancel == (tid("timeout:a", 2),) and d.state.timers == {}


def test_fan_in_finishes_once_both_answers_are_in_in_either_order() -> None:
    for first, second in (("a", "b"), ("b", "a")):
        run = Run()
        run.feed(run.start(), T0)
        d = run.answer(first, 2)
        assert d.state.status == Status.RUNNING and d.cancel == (tid(f"timeout:{first}", 1),)
        d = run.answer(second, 3)
        assert d.state.status == SUMMED and d.state.total == 5 and d.state.reason is None
        assert d.state.pending == {} and d.state.timers == {} and d.cancel == (tid(f"timeout:{second}", 1),)


def test_finish_cancels_live_timers() -> None:
    state = SumState(correlation_id=CID, timers={"t1": "timeout:a", "t2": "nudge"}, pending={"a": "c"})
    fx = Effects(Start(event_id="x", correlation_id=CID, occurred_at=T0, payload=StartPayload()), T0)
    done = finish(state, SUMMED, None, fx, total=1)
    assert fx.cancel == ["t1", "t2"] and done.timers == {} and done.pending == {} and done.total == 1
    fx = Effects(fx.cause, T0)
    assert cancel_timers(state, fx, names=("nudge",)).timers == {"t1": "timeout:a"} and fx.cancel == ["t2"]


def test_deadline_with_bounded_reminders() -> None:
    fx = Effects(Start(event_id="x", correlation_id=CID, occurred_at=T0, payload=StartPayload()), T0)
    deadline = T0 + timedelta(hours=10)
    state = SumState(correlation_id=CID)
    state = await_deadline(
        state, "deadline", 1, deadline, fx, reminder_name="nudge", every=timedelta(hours=4)
    )
    assert [(t.name, t.timer_id, t.due_at) for t in fx.schedule] == [
        ("deadline", tid("deadline", 1), deadline),
        ("nudge", tid("nudge", 1), T0 + timedelta(hours=4)),
    ]
    state = set_reminder(state, "nudge", 2, T0 + timedelta(hours=8), deadline, fx)
    state = set_reminder(state, "nudge", 3, T0 + timedelta(hours=12), deadline, fx)  # past the deadline: none
    assert [t.timer_id for t in fx.schedule][2:] == [tid("nudge", 2)] and len(state.timers) == 3


def test_ids_names_budgets() -> None:
    assert timer_id(CID, timer_name(TIMEOUT, Part.A), 3) == derive_id(CID, "timer", "timeout:a", 3)
    assert parse_timer("retry:fetch") == ("retry", "fetch") and parse_timer("deadline") == ("deadline", "")
    assert [BUDGETS.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 20]
    assert all_in(1, 0, "") and not all_in(1, None)
