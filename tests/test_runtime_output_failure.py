"""A decision whose outputs cannot be encoded fails only that process; the partition keeps flowing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from test_runtime_support import (
    MINI,
    MiniProcess,
    MiniState,
    PmThread,
    email,
    publish,
    read_topic,
    stages,
    wait_until,
)

from customer_email.events import SendEmail, SendEmailPayload
from pm.codec import decode
from pm.config import Config
from pm.events import Event, command_id
from pm.process import Decision


class BrokenOutputs(MiniProcess):
    """Like MINI, but an e-mail with subject "bad-output" decides a command the codec refuses."""

    def decide(self, state: MiniState, event: Event, now: datetime) -> Decision[MiniState]:
        decision = MINI.decide(state, event, now)
        if getattr(event.payload, "subject", "") != "bad-output":
            return decision
        cid = command_id(state.correlation_id, "send-email", 1)
        bad = SendEmail.model_construct(  # skips validation, as a buggy definition could
            event_id=cid,
            correlation_id=state.correlation_id,
            causation_id=event.event_id,
            type="SendEmail",
            occurred_at=event.occurred_at,
            schema_version=1,
            payload=SendEmailPayload.model_construct(
                command_id=cid, attempt="not-a-number", to="x", subject="s", body="b"
            ),
        )
        return replace(decision, commands=(bad,))


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_unencodable_outputs_fail_only_that_process(topics: Config) -> None:
    config = topics
    broken, fine = email("<bad@x>", subject="bad-output"), email("<fine@x>")
    with PmThread(config, definitions=[BrokenOutputs()]):
        publish(config, [broken, fine])
        wait_until(lambda: stages(config).get("<fine@x>") == "classifying", timeout=20)
    entries = {decode(m.value()).correlation_id: decode(m.value()) for m in read_topic(config, "pm.journal")}
    assert entries["<bad@x>"].payload.outcome == "failed"
    assert entries["<bad@x>"].payload.status == "failed"
    assert entries["<bad@x>"].payload.commands == []
    assert entries["<fine@x>"].payload.outcome == "applied"
    commands = [decode(m.value()).correlation_id for m in read_topic(config, "cmd.classify")]
    assert commands == ["<fine@x>"]
