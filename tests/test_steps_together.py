"""Several steps on one step consumer (`pm run consumer A B`): one Kafka consumer, one lane per step.

Each step keeps its own flow control: a step whose handlers are stuck pauses its own topic only,
and the other step's commands keep being answered. A record is routed by the topic it came from,
never by its type: another step's command on a step's topic is dead-lettered, even when this
consumer also runs that other step.
"""

from __future__ import annotations

import threading
import time

import pytest
from consumer_kit import Reader, fetch_order, fetch_policy, produce, running
from promise_kit import OffsetCheck, quick_groups
from test_consumers_base import Scripted
from test_promise_step_dlq import produce_to

from consumers import load_handler
from customer_email.events import OrderFetched, RefundPolicyFetched, Step
from pm.config import Config
from pm.events import DlqRecord
from pm.steps.consumer import StepConsumer

ORDER, POLICY = Step.FETCH_ORDER, Step.FETCH_REFUND_POLICY


def test_a_stuck_step_pauses_only_its_own_topic(topics: Config) -> None:
    config = quick_groups(topics)
    release = threading.Event()
    stuck = Scripted(lambda command, call: release.wait(30))
    consumer = StepConsumer(config, [load_handler(POLICY, config), stuck], concurrency=1, max_buffered=1)
    assert consumer.group_id == f"{config.topic_prefix}step-fetch-order+fetch-refund-policy"
    assert set(consumer.topics) == {config.topic(f"cmd.{ORDER}"), config.topic(f"cmd.{POLICY}")}
    results, dlq = Reader(config), Reader(config, "pm.dlq")
    orders = [fetch_order(f"o{i}") for i in range(6)]
    policies = [fetch_policy("refund_request") for _ in range(10)]
    misrouted = fetch_order("A-1001")  # a fetch-order command on cmd.fetch-refund-policy
    with running(consumer):
        produce(config, *orders)
        deadline = time.monotonic() + 20
        while not (consumer.stats["pauses"] and stuck.in_flight) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert consumer.stats["pauses"] == 1 and stuck.in_flight == 1
        # fetch-order is paused and stuck; fetch-refund-policy still answers every command.
        produce(config, *policies)
        produce_to(config, f"cmd.{POLICY}", misrouted)
        answered = results.take(len(policies))
        (dead,) = dlq.take(1)
        assert stuck.in_flight == 1 and not release.is_set()
        release.set()
        answered += results.take(len(orders))
    # Stopped (a synchronous commit): the one group is past every record of both topics.
    check = OffsetCheck.of(config, consumer.group_id, [f"cmd.{ORDER}", f"cmd.{POLICY}"])
    first = answered[: len(policies)]
    assert all(isinstance(r, RefundPolicyFetched) for r in first)
    assert {r.causation_id for r in first} == {c.event_id for c in policies}
    assert {r.causation_id for r in answered[len(policies) :]} == {c.event_id for c in orders}
    assert all(isinstance(r, OrderFetched) for r in answered[len(policies) :])
    assert misrouted.payload.command_id not in stuck.calls  # not routed to the fetch-order lane
    assert isinstance(dead, DlqRecord)
    assert dead.payload.failed_by == f"step-{POLICY}" and dead.payload.error_type == "UnexpectedEventType"
    assert check.behind() == {}


def test_a_step_given_twice_is_refused(topics: Config) -> None:
    handler = load_handler(POLICY, topics)
    with pytest.raises(ValueError, match="twice"):
        StepConsumer(topics, [handler, handler])
