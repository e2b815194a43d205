"""Records past Kafka's default size never stop a partition: too large in, DLQ; too large out, that process fails.

The producers keep librdkafka's default `message.max.bytes` (1,000,000, Apache Kafka's), so a
journal entry that embeds a large e-mail twice (the input and the classify command) would be refused
by the client exactly as by Kafka; before, the batch aborted and retried forever. The mini process
copies the whole e-mail into its command (the customer-email app sends a bounded excerpt, so a
large e-mail no longer makes its outputs too large: tests/test_conversation_large_email.py).
"""

from __future__ import annotations

from typing import Any

from test_runtime_support import MINI, PmThread, email, publish, read_topic, wait_until

from pm.codec import decode, encode
from pm.commands.processes import list_processes
from pm.config import Config
from pm.events import DlqRecord, JournalEntry
from pm.kafka import make_producer


def _big(cid: str, size: int) -> Any:
    event = email(cid)
    payload = event.payload.model_copy(update={"body": "x" * size})
    return event.model_copy(update={"payload": payload})


def test_large_inputs_and_outputs_fail_alone_and_the_partition_flows(topics: Config) -> None:
    huge, large, mid, normal = "<huge@m>", "<large@m>", "<mid@m>", "<normal@m>"
    # An upstream producer with a higher limit than ours (Kafka's broker could take it: 1.5 MB).
    producer = make_producer(topics, "test", **{"message.max.bytes": 4_000_000})
    producer.produce(topics.topic("email.received"), key=huge, value=encode(_big(huge, 1_500_000)))
    assert producer.flush(10) == 0
    # Fits as an input, but the journal entry (input + command, both with the body) would not.
    # Fits with its command (2 x 400 KB), not with the record the entry would carry too (its state
    # holds the e-mail): the entry leaves that record out (a rebuild re-decides it), nothing fails.
    publish(topics, [_big(large, 600_000), _big(mid, 400_000), email(normal)])
    with PmThread(topics, definitions=[MINI], verifier=lambda event: None):
        def statuses() -> dict[str, str]:
            return {r["correlation_id"]: r["status"] for r in list_processes(topics)}

        wait_until(lambda: {large, mid, normal} <= set(statuses()), timeout=30)
        found = statuses()
    assert found[normal] == "running" and found[mid] == "running"  # decided: its classify command went out
    assert found[large] == "failed" and huge not in found
    dead = [d for d in (decode(m.value()) for m in read_topic(topics, "pm.dlq")) if isinstance(d, DlqRecord)]
    assert [d.payload.error_type for d in dead] == ["RecordTooLarge"]
    assert dead[0].payload.value is None and "1500" in dead[0].payload.reason.replace(",", "")
    journal = [decode(m.value()) for m in read_topic(topics, "pm.journal")]
    failed = [j for j in journal if isinstance(j, JournalEntry) and j.correlation_id == large]
    assert len(failed) == 1 and failed[0].payload.outcome == "failed"
    assert "RecordTooLarge" in (failed[0].payload.reason or "") and failed[0].payload.commands == []
    carried = {j.correlation_id: j.payload.record for j in journal if isinstance(j, JournalEntry)}
    assert carried[mid] is None and carried[normal] is not None
