"""Helpers for the runtime tests: a tiny test-only process, event builders, topic readers, a PM thread.

The tiny process (`MINI`) is written only against `pm.process` and `pm.events`, the way
any second process would be:

    EmailReceived   -> ClassifyEmail + a classify timeout timer
    EmailClassified -> cancel the timer, SendEmail
    EmailSent       -> sent
    TimerFired      -> escalated (if it is the pending timer; stale timers are rejected)

Subject "boom" makes `decide` raise (a bug), to show that only that process fails.
Subject "fast-timer" uses a 1 s timeout, "slow-timer" a 5 s one (timer tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from customer_email.events import (
    ClassifyEmail,
    ClassifyEmailPayload,
    Email,
    EmailClassified,
    EmailClassifiedPayload,
    EmailReceived,
    EmailReceivedPayload,
    EmailSent,
    EmailSentPayload,
    SendEmail,
    SendEmailPayload,
    Step,
)
from pm.codec import encode
from pm.config import Config
from pm.events import Event, LlmCall, TimerFired, TimerSpec, command_id, derive_id
from pm.kafka import make_consumer, make_producer
from pm.process import Decision, ProcessState, Status, Upcaster
from pm.runtime import ProcessManager, run_process_manager

__all__ = [
    "MINI",
    "MiniProcess",
    "MiniState",
    "T0",
    "email",
    "classified",
    "sent",
    "publish",
    "read_topic",
    "PmThread",
    "wait_until",
    "stages",
    "wait_stage",
    "expected_states",
]

T0 = datetime.now(UTC).replace(microsecond=0)  # timers are due relative to the wall clock
LLM = LlmCall(provider="offline", model="rules", prompt="[]", raw_output="{}")


class MiniState(ProcessState):
    stage: str = "new"
    email: Email | None = None
    timer_id: str | None = None
    steps: int = 0


class MiniProcess:
    name = "mini"
    version = 1
    state_type = MiniState
    upcasters: Mapping[int, Upcaster] = {}

    def starts(self, event: Event) -> bool:
        return isinstance(event, EmailReceived)

    def initial_state(self, event: Event) -> MiniState:
        return MiniState(correlation_id=event.correlation_id)

    def decide(self, state: MiniState, event: Event, now: datetime) -> Decision[MiniState]:
        cid = state.correlation_id
        if state.terminal:
            return Decision(state, rejection=f"process is {state.status}")
        if isinstance(event, EmailReceived):
            if event.payload.subject == "boom":
                raise RuntimeError("cannot handle this e-mail")
            if state.stage != "new":
                return Decision(state, rejection="e-mail already received")
            seconds = {"fast-timer": 1, "slow-timer": 5}.get(event.payload.subject, 3600)
            timer = TimerSpec(
                timer_id=derive_id(cid, "classify-timeout"),
                name="classify-timeout",
                due_at=now + timedelta(seconds=seconds),
            )
            command = ClassifyEmail(
                event_id=command_id(cid, Step.CLASSIFY, 1),
                correlation_id=cid,
                causation_id=event.event_id,
                occurred_at=event.occurred_at,
                payload=ClassifyEmailPayload(
                    command_id=command_id(cid, Step.CLASSIFY, 1), attempt=1, email=event.payload
                ),
            )
            new = state.model_copy(
                update={"stage": "classifying", "email": event.payload, "timer_id": timer.timer_id}
            )
            return Decision(new, commands=(command,), schedule=(timer,))
        if isinstance(event, EmailClassified):
            if state.stage != "classifying" or state.email is None:
                return Decision(state, rejection="not classifying")
            cmd_id = command_id(cid, Step.SEND_EMAIL, 1)
            command = SendEmail(
                event_id=cmd_id,
                correlation_id=cid,
                causation_id=event.event_id,
                occurred_at=event.occurred_at,
                payload=SendEmailPayload(
                    command_id=cmd_id,
                    attempt=1,
                    to=state.email.sender,
                    subject="Re",
                    body=event.payload.intent,
                ),
            )
            new = state.model_copy(update={"stage": "sending", "timer_id": None, "steps": state.steps + 1})
            return Decision(new, commands=(command,), cancel=(state.timer_id,) if state.timer_id else ())
        if isinstance(event, EmailSent):
            if state.stage != "sending":
                return Decision(state, rejection="not sending")
            return Decision(
                state.model_copy(update={"stage": "done", "status": "sent", "steps": state.steps + 1})
            )
        if isinstance(event, TimerFired):
            if event.payload.timer_id != state.timer_id:
                return Decision(state, rejection="stale timer")
            return Decision(
                state.model_copy(
                    update={"stage": "timed-out", "status": Status.ESCALATED, "reason": "classify timeout"}
                )
            )
        return Decision(state, rejection=f"{event.type} not expected")


MINI = MiniProcess()


# ---------------------------------------------------------------- events


def email(cid: str, subject: str = "hello", at: datetime | None = None) -> EmailReceived:
    at = at or datetime.now(UTC)
    return EmailReceived(
        event_id=derive_id(cid, "received"),
        correlation_id=cid,
        occurred_at=at,
        payload=EmailReceivedPayload(
            message_id=cid,
            sender="jane@example.com",
            recipient="support@example.com",
            subject=subject,
            body="where is my parcel?",
            received_at=at,
        ),
    )


def classified(cid: str, intent: str = "delivery_status", at: datetime = T0) -> EmailClassified:
    cmd = command_id(cid, Step.CLASSIFY, 1)
    return EmailClassified(
        event_id=derive_id(cmd, "result"),
        correlation_id=cid,
        causation_id=cmd,
        occurred_at=at + timedelta(seconds=1),
        payload=EmailClassifiedPayload(
            command_id=cmd, attempt=1, intent=intent, risk="low", confidence=0.9, llm=LLM
        ),
    )


def sent(cid: str, at: datetime = T0) -> EmailSent:
    cmd = command_id(cid, Step.SEND_EMAIL, 1)
    return EmailSent(
        event_id=derive_id(cmd, "result"),
        correlation_id=cid,
        causation_id=cmd,
        occurred_at=at + timedelta(seconds=2),
        payload=EmailSentPayload(
            command_id=cmd, attempt=1, to="jane@example.com", message_id=f"<{cmd}@x>", smtp_response="250 ok"
        ),
    )


def publish(config: Config, events: list[Event] | list[tuple[str, str, bytes]]) -> None:
    """Produce events (to their own topic, keyed by correlation ID) or raw (topic, key, value) triples."""
    producer = make_producer(config, "test")
    for item in events:
        if isinstance(item, Event):
            producer.produce(config.topic(item.topic), key=item.correlation_id, value=encode(item))
        else:
            topic, key, value = item
            producer.produce(config.topic(topic), key=key, value=value)
        producer.poll(0)
    assert producer.flush(10) == 0


def read_topic(config: Config, logical: str, timeout: float = 10.0) -> list[Any]:
    """Every record of a topic, to the end of each partition (partition EOF, never the watermark)."""
    topic = config.topic(logical)
    consumer = make_consumer(
        config, "test-reader", f"reader-{time.monotonic_ns()}", **{"enable.partition.eof": True}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending, found = set(partitions), []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                    continue
                found.append(message)
        assert not pending, f"no EOF on {topic} partitions {pending}"
        return found
    finally:
        consumer.close()


def stages(config: Config) -> dict[str, str]:
    """correlation ID -> the mini process's stage, from the stores (read-only: works while the PM runs)."""
    from pm.store import PartitionStore, list_store_paths

    found: dict[str, str] = {}
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition, read_only=True)
        try:
            found.update({cid: str(data["state"].get("stage")) for cid, data in store.records()})
        finally:
            store.close()
    return found


def wait_stage(config: Config, cids: list[str], stage: str, timeout: float = 20.0) -> None:
    """Results are only published once the PM asked for them: topics are not ordered among each other."""
    wait_until(lambda: all(stages(config).get(c) == stage for c in cids), timeout=timeout)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class PmThread:
    """`run_process_manager` in a thread with a stop event (what `pm run pm` does in the foreground)."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        self.stop = threading.Event()
        self.started = threading.Event()
        self.manager: ProcessManager | None = None
        self.error: BaseException | None = None
        kwargs.setdefault("definitions", [MINI])
        kwargs.setdefault("verifier", lambda event: None)
        self._kwargs = kwargs
        self._config = config
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        def on_started(manager: ProcessManager) -> None:
            self.manager = manager
            self.started.set()

        try:
            run_process_manager(self._config, stop=self.stop, on_started=on_started, **self._kwargs)
        except BaseException as exc:
            self.error = exc
            self.started.set()

    def __enter__(self) -> PmThread:
        """Start, and return once the first assignment is caught up (or raise what the PM raised)."""
        self._thread.start()
        self.started.wait(30)
        wait_until(
            lambda: self.error is not None or (self.manager is not None and self.manager.assignments > 0)
        )
        if self.error is not None:
            self._thread.join(30)
            raise self.error
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(reraise=exc_type is None)  # a test's own failure is not masked by the PM's

    def close(self, *, reraise: bool = True) -> None:
        """Stop the PM; a crash of the PM thread is raised here, never swallowed."""
        self.stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "PM thread did not stop"
        if reraise and self.error is not None:
            raise AssertionError(f"the PM crashed: {type(self.error).__name__}: {self.error}") from self.error


def expected_states(inputs: list[Event]) -> dict[str, tuple[str, str]]:
    """What an uninterrupted, duplicate-free run must end with: decide folded purely, per process."""
    states: dict[str, MiniState] = {}
    seen: set[str] = set()
    for event in inputs:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        state = states.get(event.correlation_id) or MINI.initial_state(event)
        try:
            decision = MINI.decide(state, event, event.occurred_at)
            if decision.rejection is None:
                state = decision.state
        except RuntimeError as exc:
            state = state.model_copy(update={"status": Status.FAILED, "reason": f"RuntimeError: {exc}"})
        states[event.correlation_id] = state
    return {cid: (str(s.status), s.stage) for cid, s in states.items()}
