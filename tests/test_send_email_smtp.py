"""send-email against a real SMTP server that misbehaves: what each failure may and may not claim.

The server is the aiosmtpd sink (consumers/smtp_sink.py) told to defer (4xx), refuse (5xx) or drop
the connection after DATA. The promises (consumers/send_email.py):

- 4xx: nothing was delivered; transient, retried by the consumer; never a result saying `sent`;
- 5xx: nothing was delivered; a permanent failed result at once, no retry;
- dropped after DATA: it may have been delivered, so an *uncertain* failed result and no resend,
  not even when the command comes again;
- `sending` is on disk before the SMTP transaction starts (what makes the above decidable after a
  crash), and a restart after `sent` rebuilds the result from the ledger instead of sending again.

(The restart after `sending`, by kill -9 mid-transaction, is test_consumers_send_email.py's.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_kit import Reader, produce, running, send_email
from promise_kit import quick_groups

from consumers import load_handler
from consumers.send_email import SENDING, SENT, SendEmailHandler, message_id_for
from consumers.smtp_sink import ACCEPT, DEFER, DROP_AFTER_DATA, REFUSE, SmtpSink
from customer_email.events import EmailSent, Step
from pm.broker import free_port
from pm.config import Config
from pm.events import StepFailed
from pm.steps.consumer import RetryPolicy, StepConsumer
from pm.steps.ledger import Ledger, LedgerEntry, ledger_path

FAST = RetryPolicy(tries=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "maildir", port=free_port()) as running_sink:
        yield running_sink


@pytest.fixture
def config(topics: Config, sink: SmtpSink) -> Config:
    return quick_groups(topics).with_settings(smtp_port=sink.port, reply_from="support@shop.example")


def consumer(config: Config) -> StepConsumer:
    return StepConsumer(config, load_handler("send-email", config), retry=FAST, concurrency=1)


def ledger_entry(config: Config, command_id: str) -> LedgerEntry | None:
    """The consumer's ledger entry (read after the consumer stopped: RocksDB locks it while it runs)."""
    with Ledger(ledger_path(config, Step.SEND_EMAIL)) as ledger:
        return ledger.get(command_id)


def test_sending_is_on_disk_before_the_smtp_transaction(tmp_path: Path, sink: SmtpSink) -> None:
    config = Config(state_dir=tmp_path / "state").with_settings(smtp_port=sink.port)
    handler = SendEmailHandler(config)
    command = send_email()
    seen: list[str | None] = []
    with Ledger(tmp_path / "ledger") as ledger:
        handler.use_ledger(ledger)

        def at_data(_envelope: Any) -> None:  # on the server's thread, while the sender waits for the reply
            entry = ledger.get(command.payload.command_id)
            seen.append(entry.state if entry is not None else None)

        sink.handler.on_data = at_data
        result = handler.handle(command, command.occurred_at)
        after = ledger.get(command.payload.command_id)
    assert seen == [SENDING]  # a crash from here on finds `sending`: uncertain, never sent again
    assert isinstance(result, EmailSent) and after is not None and after.state == SENT
    assert after.detail["message_id"] == message_id_for(command.payload.command_id)
    assert after.detail["smtp_response"] == result.payload.smtp_response


def test_4xx_is_retried_and_never_claims_sent(config: Config, sink: SmtpSink) -> None:
    reader = Reader(config)
    always_deferred, deferred_once = send_email(), send_email()
    with running(consumer(config)):
        sink.mode = DEFER
        produce(config, always_deferred)
        (gave_up,) = reader.take(1)
        tries_then = sink.transactions
        # The server recovers after one more deferral: the consumer's retry delivers it, once.
        sink.mode = ACCEPT
        sink.handler.script(DEFER)
        produce(config, deferred_once)
        (delivered,) = reader.take(1)
    assert isinstance(gave_up, StepFailed)
    assert gave_up.payload.retryable and not gave_up.payload.uncertain  # the PM may send it again
    assert "451" in gave_up.payload.reason
    assert tries_then == FAST.tries  # every try reached DATA and was deferred
    assert isinstance(delivered, EmailSent) and delivered.payload.smtp_response.startswith("250 ")
    assert sink.transactions == FAST.tries + 2
    (message,) = sink.messages()  # only the second command's, once
    assert message["Message-ID"] == message_id_for(deferred_once.payload.command_id)
    entry = ledger_entry(config, always_deferred.payload.command_id)
    assert entry is not None and entry.completed  # the failed result is what a redelivery gets
    assert "451" in entry.detail["reason"]  # the `not_sent` record: the server said no, nothing went out


def test_5xx_is_a_permanent_failure_without_retry(config: Config, sink: SmtpSink) -> None:
    reader = Reader(config)
    command = send_email()
    sink.mode = REFUSE
    with running(consumer(config)):
        produce(config, command)
        (result,) = reader.take(1)
    assert isinstance(result, StepFailed)
    assert not result.payload.retryable and not result.payload.uncertain
    assert "refused" in result.payload.reason and "554" in result.payload.reason
    assert sink.transactions == 1  # not retried
    assert sink.messages() == []


def test_connection_dropped_after_data_is_uncertain_and_never_resent(config: Config, sink: SmtpSink) -> None:
    reader = Reader(config)
    command = send_email()
    sink.mode = DROP_AFTER_DATA
    with running(consumer(config)):
        produce(config, command)
        (result,) = reader.take(1)
        # The server works again and the command comes again (redelivery, or an operator's replay):
        # the recorded result is published again, byte for byte; nothing goes to the server.
        sink.mode = ACCEPT
        produce(config, command)
        reader.take(1)
    assert isinstance(result, StepFailed)
    assert result.payload.uncertain and not result.payload.retryable  # a human checks the mailbox
    assert reader.raw[0].value() == reader.raw[1].value()
    assert sink.transactions == 1
    (message,) = sink.messages()  # it did arrive: exactly why it must not be sent blindly again
    assert message["Message-ID"] == message_id_for(command.payload.command_id)
    entry = ledger_entry(config, command.payload.command_id)
    assert entry is not None and entry.completed and "since" in entry.detail  # `sending`, never `sent`
    assert "smtp_response" not in entry.detail


def test_restart_after_sent_rebuilds_the_result_from_the_ledger(config: Config, sink: SmtpSink) -> None:
    reader = Reader(config)
    command = send_email()
    # The crashed run: SMTP done and `sent` recorded, then the process died before the consumer base
    # recorded and published the result. Same ledger directory as the consumer below.
    with Ledger(ledger_path(config, Step.SEND_EMAIL)) as ledger:
        first = SendEmailHandler(config)
        first.use_ledger(ledger)
        lost = first.handle(command, command.occurred_at)
        state = ledger.get(command.payload.command_id)
    assert state is not None and state.state == SENT and len(sink.messages()) == 1

    with running(consumer(config)):  # the restart; the PM's command is redelivered
        produce(config, command)
        (result,) = reader.take(1)
    assert isinstance(result, EmailSent) and isinstance(lost, EmailSent)
    assert result.payload == lost.payload  # message ID, recipient and the server's reply, from the ledger
    assert sink.transactions == 1 and len(sink.messages()) == 1  # not sent again


def test_connections_are_reused_and_a_closed_one_is_replaced_without_doubt(tmp_path: Path) -> None:
    """Pooled SMTP: one connection for several messages; after the server dropped it (a restart),
    the next message fails at MAIL FROM, before anything was transferred, and goes out on a new one
    (sent, not uncertain)."""
    port = free_port()
    config = Config(state_dir=tmp_path / "state").with_settings(smtp_port=port)
    handler = SendEmailHandler(config)
    with Ledger(tmp_path / "ledger") as ledger:
        handler.use_ledger(ledger)
        with SmtpSink(tmp_path / "maildir", port=port) as first:
            results = [handler.handle(c, c.occurred_at) for c in (send_email(), send_email(), send_email())]
            peers = list(first.handler.peers)
        with SmtpSink(tmp_path / "maildir", port=port) as second:  # the pooled connection is dead now
            after_restart = handler.handle(command := send_email(), command.occurred_at)
            reconnected = list(second.handler.peers)
            handler.close()
        mailbox_size = len(second.messages())
    assert all(isinstance(r, EmailSent) for r in results) and len(set(peers)) == 1
    assert isinstance(after_restart, EmailSent) and len(reconnected) == 1
    entry = ledger_entry_at(tmp_path / "ledger", command.payload.command_id)
    assert entry is not None and entry.state == SENT
    assert mailbox_size == 4  # each message exactly once


def ledger_entry_at(path: Path, command_id: str) -> LedgerEntry | None:
    with Ledger(path) as ledger:
        return ledger.get(command_id)
