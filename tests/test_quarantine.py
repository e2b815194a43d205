"""Poison isolation, quarantine and operators' commands, on the real broker.

A record that keeps its batch from committing must stall nothing but its own process: an error
the producer attributes to one record fails that process (journaled); an abort nobody can
attribute is bisected to one input, whose process is quarantined with its later inputs parked
until `pm quarantine release`. Faults are injected at the producer boundary (the broker is real).
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from test_runtime_support import (
    MiniProcess,
    PmThread,
    classified,
    email,
    publish,
    read_topic,
    stages,
    wait_until,
)

from pm.cli import main
from pm.codec import decode
from pm.commands.processes import list_processes
from pm.config import Config
from pm.operator import send_operator_command
from pm.process import Decision

MARKER = b"poison-subject"


class FaultyProducer:
    """The PM's transactional producer, refusing what carries MARKER to a `cmd.` topic while `armed`.

    mode "produce": `produce()` raises MSG_SIZE_TOO_LARGE, as librdkafka does for a record over its
    limit (attributed to that record). mode "commit": the commit fails with a permanent error that
    names no record (as a broker refusing the transaction would).
    """

    def __init__(self, inner: Producer, mode: str) -> None:
        self.inner, self.mode = inner, mode
        self.armed = True
        self.tainted = False
        self.refusals = 0

    def produce(self, topic: str, **kwargs: Any) -> None:
        hit = self.armed and ".cmd." in f".{topic}" and MARKER in (kwargs.get("value") or b"")
        if hit and self.mode == "produce":
            self.refusals += 1
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "injected: message too large"))
        self.tainted = self.tainted or hit
        self.inner.produce(topic, **kwargs)

    def begin_transaction(self, *args: Any) -> None:
        self.tainted = False
        self.inner.begin_transaction(*args)

    def commit_transaction(self, *args: Any) -> None:
        if self.tainted and self.mode == "commit":
            self.refusals += 1
            raise KafkaException(
                KafkaError(
                    KafkaError.TOPIC_AUTHORIZATION_FAILED, "injected: refused", txn_requires_abort=True
                )
            )
        self.inner.commit_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _inject(pm: PmThread, mode: str) -> FaultyProducer:
    assert pm.manager is not None
    faulty = FaultyProducer(pm.manager.producer, mode)
    pm.manager._producer = faulty  # type: ignore[assignment]
    return faulty


def _row(config: Config, cid: str) -> dict[str, Any]:
    return next((r for r in list_processes(config) if r["correlation_id"] == cid), {})


def _entries(config: Config, cid: str) -> list[Any]:
    """The journal entries of one process in order (Tansu also shows those of aborted transactions)."""
    entries = [decode(m.value()) for m in read_topic(config, "pm.journal")]
    return [e for e in entries if e.correlation_id == cid]


def test_an_abort_nobody_attributes_is_bisected_and_quarantines_only_that_process(topics: Config) -> None:
    config = topics
    poison = "<poison@x>"
    normal = [f"<n{i}@x>" for i in range(40)]
    with PmThread(config, batch_size=64) as pm:
        faulty = _inject(pm, "commit")
        publish(config, [email(c) for c in normal[:20]] + [email(poison, subject=MARKER.decode())])
        publish(config, [email(c) for c in normal[20:]])
        wait_until(lambda: _row(config, poison).get("status") == "quarantined", timeout=60)
        wait_until(lambda: all(stages(config).get(c) == "classifying" for c in normal), timeout=30)
        # A later input of the quarantined process is parked, not decided; others still flow.
        publish(config, [classified(poison), classified(normal[0])])
        wait_until(lambda: _row(config, poison).get("parked") == 2 and stages(config)[normal[0]] == "sending")
        assert stages(config)[poison] == "new"  # nothing of it was decided
        assert faulty.refusals >= 2
        assert pm.manager is not None and pm.manager.stats.aborts == faulty.refusals
        # `pm quarantine list` shows it; the fix is made, then an operator releases it.
        assert [r["correlation_id"] for r in list_processes(config, "quarantined")] == [poison]
        faulty.armed = False
        send_operator_command(config, poison, "release", operator="ops-test", note="topic ACL fixed")
        # Released: the parked inputs are decided in the order they came (received, then classified).
        wait_until(lambda: stages(config).get(poison) == "sending", timeout=30)
    assert _row(config, poison)["status"] == "running" and _row(config, poison)["parked"] == 0
    outcomes = [(e.payload.outcome, decode(e.payload.event).type) for e in _entries(config, poison)]
    # Tansu also shows the entries of the aborted attempts (notes/tansu.md): from the quarantine on, all committed.
    assert outcomes[outcomes.index(("quarantined", "EmailReceived")) :] == [
        ("quarantined", "EmailReceived"),
        ("parked", "EmailClassified"),
        ("applied", "OperatorCommand"),
        ("applied", "EmailReceived"),
        ("applied", "EmailClassified"),
    ]
    # The store matches the log: a rebuild from the journal gives the same states.
    live = stages(config)
    with PmThread(config, rebuild=True):
        assert stages(config) == live


def test_a_record_error_of_one_output_fails_only_its_process(topics: Config) -> None:
    config = topics
    poison = "<too-big@x>"
    normal = [f"<m{i}@x>" for i in range(20)]
    with PmThread(config) as pm:
        faulty = _inject(pm, "produce")
        publish(config, [email(c) for c in normal[:10]] + [email(poison, subject=MARKER.decode())])
        publish(config, [email(c) for c in normal[10:]])
        wait_until(lambda: _row(config, poison).get("status") == "failed", timeout=60)
        wait_until(lambda: all(stages(config).get(c) == "classifying" for c in normal), timeout=30)
    assert faulty.refusals == 1  # attributed at once: retried as failed, no bisection
    row = _row(config, poison)
    assert "could not be produced" in row["reason"] and "too large" in row["reason"]
    failed = [e for e in _entries(config, poison) if e.payload.outcome == "failed"]
    assert failed and all(e.payload.commands == [] for e in failed)


class Resumable(MiniProcess):
    """MINI, whose `sending` stage has no timer (so the watchdog sees it stuck), plus a resume()."""

    def resume(self, state: Any, command: Any, now: Any) -> Decision[Any]:
        return Decision(state.model_copy(update={"stage": "resumed"}))


def test_watchdog_reports_a_stuck_process_and_operators_resume_or_escalate_it(
    topics: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    config = topics
    stuck_one, other, plain = "<stuck@x>", "<other@x>", "<plain@x>"
    with PmThread(config, definitions=[Resumable()]) as pm:
        publish(config, [email(c) for c in (stuck_one, other, plain)])
        wait_until(lambda: all(stages(config).get(c) == "classifying" for c in (stuck_one, other, plain)))
        assert list_processes(config, stuck=True) == []  # each waits on its classify timer
        publish(config, [classified(stuck_one), classified(other)])
        wait_until(lambda: len(list_processes(config, stuck=True)) == 2)
        assert pm.manager is not None and pm.manager.stats.stuck == 2
        argv = ["--bootstrap", config.resolved_bootstrap, "--prefix", config.topic_prefix]
        argv += ["--state-dir", str(config.state_dir)]
        capsys.readouterr()
        assert main(["processes", "--stuck", *argv]) == 0
        shown = capsys.readouterr().out
        assert stuck_one in shown and other in shown and plain not in shown and "resume or escalate" in shown
        assert main(["resume", stuck_one, "--operator", "ops-test", *argv]) == 0
        assert main(["escalate", other, "--note", "customer called", "--operator", "ops-test", *argv]) == 0
        assert main(["quarantine", "release", plain, "--operator", "ops-test", *argv]) == 0
        wait_until(lambda: stages(config).get(stuck_one) == "resumed")
        wait_until(lambda: _row(config, other).get("status") == "escalated")
        wait_until(lambda: any(e.payload.outcome == "rejected" for e in _entries(config, plain)))
    assert _row(config, other)["reason"] == "escalated by ops-test: customer called"
    refused = [e for e in _entries(config, plain) if e.payload.outcome == "rejected"]
    assert refused[0].payload.reason == "not quarantined (status running)"
    assert _row(config, plain)["status"] == "running"


def test_an_operator_command_for_an_unknown_process_goes_to_the_dlq(topics: Config) -> None:
    config = topics
    with PmThread(config):
        send_operator_command(config, "<nobody@x>", "escalate", operator="ops-test")
        dead = wait_until(lambda: [decode(m.value()) for m in read_topic(config, "pm.dlq")])
    assert dead[0].payload.error_type == "UnknownProcess"
