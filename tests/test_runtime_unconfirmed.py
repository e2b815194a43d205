"""An input journaled by a transaction that never committed its offsets gets its outputs again.

On Apache Kafka such a journal entry is aborted and invisible. The local broker shows aborted
records to read_committed readers (shared/notes/tansu.md), so a PM killed between producing a
batch and committing it leaves journal entries whose commands may never have been written. The
restarted PM folds the entry, sees the redelivered input as a duplicate, and must produce the
recorded outputs again (step consumers dedupe by command ID, so that is safe).
"""

from __future__ import annotations

from test_runtime_support import MINI, PmThread, email, read_topic, wait_until

from pm.codec import decode, encode
from pm.config import Config
from pm.journal import advance, build_entry, evaluate
from pm.kafka import make_producer


def test_redelivered_input_of_an_unconfirmed_entry_re_emits_its_commands(topics: Config) -> None:
    config = topics
    event = email("<unconfirmed@x>")
    raw = encode(event)
    producer = make_producer(config, "test")
    # The input, as upstream produced it; where it landed is what the crashed PM journaled.
    delivered: list[tuple[int, int]] = []
    producer.produce(
        config.topic("email.received"),
        key=event.correlation_id,
        value=raw,
        on_delivery=lambda err, msg: delivered.append((msg.partition(), msg.offset())),
    )
    assert producer.flush(10) == 0
    partition, offset = delivered[0]
    # The crashed PM's journal entry: written, but its ClassifyEmail command never was.
    state = MINI.initial_state(event)
    outcome = evaluate(MINI, state, event, now=event.occurred_at)
    after = advance(MINI, None, state, event, outcome, -1)
    entry = build_entry(
        MINI,
        event,
        raw,
        topic="email.received",
        partition=partition,
        offset=offset,
        outcome=outcome,
        status=after.status,
    )
    producer.produce(
        config.topic("pm.journal"), key=event.correlation_id, value=encode(entry), partition=partition
    )
    assert producer.flush(10) == 0
    assert read_topic(config, "cmd.classify") == []

    with PmThread(config) as pm:
        commands = wait_until(lambda: read_topic(config, "cmd.classify"), timeout=20)
        assert pm.manager is not None
        wait_until(lambda: pm.manager is not None and pm.manager.stats.reemitted >= 1, timeout=10)

    assert [decode(m.value()).event_id for m in commands] == [decode(entry.payload.commands[0]).event_id]
    # It was a duplicate: the journal still holds exactly the one entry for that input.
    journal = [decode(m.value()) for m in read_topic(config, "pm.journal")]
    assert [j.event_id for j in journal] == [entry.event_id]


def test_a_genuine_duplicate_at_another_offset_re_emits_nothing(topics: Config) -> None:
    config = topics
    event = email("<dup@x>")
    with PmThread(config) as pm:
        producer = make_producer(config, "test")
        for _ in range(2):  # upstream sends the same e-mail twice: two offsets
            producer.produce(config.topic("email.received"), key=event.correlation_id, value=encode(event))
            assert producer.flush(10) == 0
        wait_until(lambda: pm.manager is not None and pm.manager.stats.duplicates >= 1, timeout=20)
        assert pm.manager is not None and pm.manager.stats.reemitted == 0
    assert len(read_topic(config, "cmd.classify")) == 1
