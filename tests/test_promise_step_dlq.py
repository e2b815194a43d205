"""A record on `cmd.<step>` that is not that step's command goes to the DLQ, and the partition keeps flowing.

A step consumer must never run its side effect for another step's command (a mis-routed or forged
record), nor stall behind it: the record is dead-lettered with its bytes and the reason, its offset
is committed like any finished command, and the next command on the same partition is handled.
"""

from __future__ import annotations

from datetime import UTC, datetime

from consumer_kit import Reader, fetch_order, fetch_policy, produce, running
from promise_kit import OffsetCheck, quick_groups

from consumers import load_handler
from customer_email.events import EmailSent, EmailSentPayload, RefundPolicyFetched, Step
from pm.codec import decode, encode
from pm.config import Config
from pm.events import DlqRecord, Event, derive_id
from pm.kafka import make_producer
from pm.partitioner import partition_for
from pm.steps.consumer import StepConsumer

STEP = Step.FETCH_REFUND_POLICY
TOPIC = f"cmd.{STEP}"


def test_wrong_step_command_is_dead_lettered_and_the_next_command_is_handled(topics: Config) -> None:
    config = quick_groups(topics)
    results, dlq = Reader(config), Reader(config, "pm.dlq")
    valid = fetch_policy("refund_request")
    cid = valid.correlation_id
    # Same key, so the same partition, in this order: another step's command, a result (not a
    # command at all), then this step's own command.
    wrong_step = fetch_order("A-1001", correlation_id=cid)
    not_a_command = EmailSent(
        event_id=derive_id(cid, "stray-result"),
        correlation_id=cid,
        occurred_at=datetime.now(UTC),
        payload=EmailSentPayload(
            command_id="c1", attempt=1, to="jane@example.com", message_id="<m@x>", smtp_response="250 ok"
        ),
    )
    strays: list[Event] = [wrong_step, not_a_command]
    step = StepConsumer(config, load_handler(STEP, config))
    with running(step):
        for stray in strays:
            produce_to(config, TOPIC, stray)
        produce(config, valid)
        (result,) = results.take(1)
        records = dlq.take(2)
    partition = partition_for(cid.encode(), 6)

    assert isinstance(result, RefundPolicyFetched) and result.payload.command_id == valid.payload.command_id
    assert step.stats["handled"] == 1 and step.stats["dead_lettered"] == 2
    expected = {type(stray).__name__: stray for stray in strays}
    found: set[str] = set()
    for raw, record in zip(dlq.raw, records, strict=True):
        assert isinstance(record, DlqRecord)
        p = record.payload
        type_name = decode(p.value or b"").type
        found.add(type_name)
        assert p.source_topic == TOPIC and p.source_partition == partition
        assert p.key == cid.encode() and p.value == encode(expected[type_name])  # the bytes, for an operator
        assert p.error_type == "UnexpectedEventType" and p.failed_by == f"step-{STEP}"
        assert p.reason == f"{type_name} is not a {STEP} command"
        assert raw.key() == cid.encode()  # keyed as the original
        headers = dict(raw.headers())
        assert headers["dlq.error_type"] == b"UnexpectedEventType"
        assert headers["dlq.source"].decode() == f"{TOPIC}/{partition}/{p.source_offset}"
    assert found == set(expected)
    # The group's committed offset is past all three records: nothing is redone, nothing blocks.
    check = OffsetCheck.of(config, f"{config.topic_prefix}step-{STEP}", [TOPIC])
    assert check.behind() == {}
    assert check.ends[(TOPIC, partition)] >= 3


def produce_to(config: Config, logical: str, event: Event) -> None:
    """Produce `event` onto a topic that is not its own (what a mis-routing producer does)."""
    producer = make_producer(config, "test")
    producer.produce(config.topic(logical), value=encode(event), key=event.correlation_id.encode())
    assert producer.flush(10) == 0
