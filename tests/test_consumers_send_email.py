"""send-email end to end: broker -> consumer -> real SMTP server (the sink) -> Maildir; at most once."""

from __future__ import annotations

import mailbox
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_kit import GatedSync, Reader, produce, running, send_email
from test_runtime_support import read_topic

from consumers import load_handler
from consumers import send_email as send_email_step
from consumers.send_email import FAULT_ENV, SENDING, SendEmailHandler, build_message, message_id_for
from consumers.smtp_sink import SmtpSink
from customer_email.addresses import parse_address
from customer_email.events import EmailSent
from pm.broker import free_port
from pm.codec import decode
from pm.config import Config
from pm.events import Event, StepFailed
from pm.steps.consumer import StepConsumer
from pm.steps.handler import PermanentError
from pm.steps.ledger import Ledger, ledger_path


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "maildir", port=free_port()) as running_sink:
        yield running_sink


def test_sent_once_even_when_redelivered(topics: Config, sink: SmtpSink) -> None:
    config = topics.with_settings(smtp_port=sink.port, reply_from="support@shop.example")
    reader = Reader(config)
    command = send_email(to="jane@example.com")
    with running(StepConsumer(config, load_handler("send-email", config))):
        produce(config, command)
        (result,) = reader.take(1)
        produce(config, command)  # redelivered
        reader.take(1)
    assert isinstance(result, EmailSent)
    assert result.payload.message_id == message_id_for(command.payload.command_id)
    assert result.payload.smtp_response.startswith("250 OK: queued as")
    assert reader.raw[0].value() == reader.raw[1].value()
    (message,) = sink.messages()
    assert message["Message-ID"] == result.payload.message_id and message["To"] == "jane@example.com"
    assert message["From"] == "support@shop.example" and message["In-Reply-To"] == "<m1@mail.example>"
    assert message["References"] == "<m1@mail.example>"


SPOOFED_RECIPIENTS = [
    '"victim@shop.example" <attacker@evil.example>',  # display name posing as the customer
    "attacker@evil.example, victim@shop.example",  # smtplib would deliver to both
    "victim@shop.example <attacker@evil.example>",
    "jane@example.com\r\nBcc: x@evil.example",  # header injection
    "undisclosed: a@x.example, b@y.example;",
]


@pytest.mark.parametrize("to", SPOOFED_RECIPIENTS)
def test_refused_recipient_sends_nothing_and_leaves_the_ledger_alone(
    tmp_path: Path, sink: SmtpSink, to: str
) -> None:
    config = Config(state_dir=tmp_path / "state").with_settings(smtp_port=sink.port)
    handler = SendEmailHandler(config)
    ledger = Ledger(tmp_path / "ledger")
    handler.use_ledger(ledger)
    command = send_email(to=to)
    try:
        with pytest.raises(PermanentError, match=r"refused recipient: to: "):
            handler.handle(command, command.occurred_at)
        assert ledger.get(command.payload.command_id) is None  # no `sending`: nothing is uncertain
    finally:
        ledger.close()
    assert sink.messages() == []


def test_the_smtp_transaction_starts_only_once_sending_is_synced_and_sent_is_not_synced_alone(
    tmp_path: Path, sink: SmtpSink
) -> None:
    # At most once rests on `sending` being on disk before SMTP starts. The handler is held inside
    # that mark's WAL sync: no transaction may have reached the server by then.
    config = Config(state_dir=tmp_path / "state").with_settings(smtp_port=sink.port)
    handler = SendEmailHandler(config)
    ledger = Ledger(tmp_path / "ledger")
    gated = GatedSync(ledger._db)
    ledger._db = gated
    handler.use_ledger(ledger)
    command = send_email(to="jane@example.com")
    results: list[Event] = []
    thread = threading.Thread(target=lambda: results.append(handler.handle(command, command.occurred_at)))
    try:
        thread.start()
        assert gated.entered.wait(10), "the handler never synced the ledger"
        assert sink.transactions == 0  # held in the sync of `sending`: nothing sent yet
        gated.gate.set()
        thread.join(20)
        assert [type(r) for r in results] == [EmailSent] and sink.transactions == 1
        assert gated.syncs == 1  # `sent` waits for the next `sending`'s sync
        entry = ledger.get(command.payload.command_id)
        assert entry is not None and entry.state == "sent"
    finally:
        gated.gate.set()
        thread.join(20)
        ledger._db = gated.db
        ledger.close()


def test_spoofed_recipient_is_a_failed_result_and_a_plain_one_is_delivered(
    topics: Config, sink: SmtpSink
) -> None:
    config = topics.with_settings(smtp_port=sink.port, reply_from="support@shop.example")
    reader = Reader(config)
    spoofed = send_email(to='"victim@shop.example" <attacker@evil.example>')
    listed = send_email(to="attacker@evil.example, victim@shop.example")
    plain = send_email(to="Jane Doe <Jane@Example.com>")
    with running(StepConsumer(config, load_handler("send-email", config))):
        produce(config, spoofed, listed, plain)
        results = {event.correlation_id: event for event in reader.take(3)}
    for refused in (spoofed, listed):
        result = results[refused.correlation_id]
        assert isinstance(result, StepFailed)
        assert not result.payload.retryable and not result.payload.uncertain
        assert "refused recipient: to: " in result.payload.reason
    delivered = results[plain.correlation_id]
    assert isinstance(delivered, EmailSent) and delivered.payload.to == "jane@example.com"
    (message,) = sink.messages()  # only the plain one reached the SMTP server
    assert message["To"] == "jane@example.com"  # the bare address: no display name is copied
    assert message["X-Envelope-To"] == message["To"]  # the envelope goes where the header says
    assert parse_address(message["X-Envelope-To"]) == parse_address(message["To"])
    assert message["Message-ID"] == message_id_for(plain.payload.command_id)


def test_smtp_down_is_retried_then_retryable(topics: Config) -> None:
    from pm.steps.consumer import RetryPolicy

    config = topics.with_settings(smtp_port=free_port())
    reader = Reader(config)
    retry = RetryPolicy(tries=2, base_delay=0.01, max_delay=0.02)
    with running(StepConsumer(config, load_handler("send-email", config), retry=retry)):
        produce(config, send_email())
        (result,) = reader.take(1)
    assert isinstance(result, StepFailed) and result.payload.retryable and not result.payload.uncertain


def _consumer_process(config: Config, smtp_port: int, fault: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PM_SMTP_PORT": str(smtp_port), "OTEL_SDK_DISABLED": "true"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = "hang-after-data"
    argv = [sys.executable, "-m", "pm", "run", "consumer", "send-email", "--bootstrap", config.bootstrap]
    argv += ["--prefix", config.topic_prefix, "--state-dir", str(config.state_dir)]
    return subprocess.Popen(argv, env={**env, "PM_FETCH_WAIT_MAX_MS": "10"}, stderr=subprocess.DEVNULL)


def test_kill_9_between_sending_and_sent_gives_one_uncertain_result(topics: Config, sink: SmtpSink) -> None:
    reader = Reader(topics)
    command = send_email()
    crashing = _consumer_process(topics, sink.port, fault=True)
    try:
        produce(topics, command)
        deadline = time.monotonic() + 30
        while not sink.messages() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sink.messages()) == 1, "the consumer never reached the SMTP server"
        crashing.send_signal(signal.SIGKILL)  # after DATA, before `sent` is recorded
        crashing.wait(10)
    finally:
        if crashing.poll() is None:
            crashing.kill()
            crashing.wait()
    # Where it died: `sending` on disk, no result published (the topic read to its end).
    with Ledger(ledger_path(topics, "send-email")) as ledger:
        crashed = ledger.get(command.payload.command_id)
    assert crashed is not None and crashed.state == SENDING
    assert read_topic(topics, "step.results") == []
    restarted = _consumer_process(topics, sink.port, fault=False)
    try:
        (result,) = reader.take(1, timeout=40)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(30) == 0
    # Stopped: nothing more can come. Exactly one result was published, the uncertain one.
    assert [decode(m.value()) for m in read_topic(topics, "step.results")] == [result]
    assert isinstance(result, StepFailed)
    assert result.payload.uncertain and not result.payload.retryable
    assert result.payload.command_id == command.payload.command_id
    assert len(mailbox.Maildir(str(sink.maildir))) == 1  # never sent a second time


def test_the_reply_is_built_as_the_standard_policy_builds_it_and_still_refuses_line_breaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # build_message makes each header class once (_HeaderClasses); the bytes and the checks must be the
    # standard library's own.
    from datetime import UTC, datetime
    from email.policy import default

    command = send_email(to="jane@example.com")
    long_subject = "Re: Rückerstattung – très long, " * 8  # folded and RFC 2047 encoded
    odd = command.model_copy(
        update={"payload": command.payload.model_copy(update={"subject": long_subject, "body": "Grüße\n" * 40})}
    )
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    built = [build_message(c, "support@shop.example", now).as_bytes() for c in (command, odd)]
    monkeypatch.setattr(send_email_step, "_POLICY", default)
    assert built == [build_message(c, "support@shop.example", now).as_bytes() for c in (command, odd)]
    monkeypatch.undo()
    injected = command.model_copy(
        update={"payload": command.payload.model_copy(update={"subject": "Hi\r\nBcc: x@evil.example"})}
    )
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        build_message(injected, "support@shop.example", now)


def _tricky_text(rng: random.Random, longest: int) -> str:
    """Printable ASCII with spaces, or a mix with what a header must not carry as is."""
    if rng.random() < 0.85:
        alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 3
    else:
        alphabet = string.ascii_letters + "<>()\"'\\@=?:; \t\r\n" + "ü€\u2028"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))
    return rng.choice([text, text + "=?utf-8?q?x?=", "  " + text, text, text, text])


def test_a_reply_written_directly_is_byte_for_byte_the_one_the_email_package_builds() -> None:
    # render_reply writes the reply itself (~50 us against ~1.3 ms) for plain headers only; whatever it
    # writes must be exactly what build_message(...).as_bytes() would send, and whatever the standard
    # builder refuses (line breaks, ...) it must leave to it. Seeded, so a failure replays.
    from datetime import UTC, datetime, timedelta, timezone

    from consumers.send_email import render_reply

    rng = random.Random(20261202)
    pieces = ["Hello there. ", "x" * 90, "Grüße ", "\n", "\r\n", "\r", "\x0b", "\u2028", "=", ".", "\n.\n", "  "]
    pieces += ["\t", "€", "From me\n"]
    written = 0
    for i in range(6000):
        base = send_email(to="ana@shop.example")
        payload = base.payload.model_copy(
            update={
                "command_id": rng.choice([base.payload.command_id, _tricky_text(rng, 20) or "k", "a--b"]),
                "subject": _tricky_text(rng, rng.choice([40, 75])),
                # now and then a lone surrogate, which cannot be encoded: left to the builder, which says so
                "body": "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) + "\ud800" * (i % 40 == 0),
                "in_reply_to": rng.choice([None, "", "<m1@mail.example>", _tricky_text(rng, 40)]),
            }
        )
        command = base.model_copy(
            update={"payload": payload, "correlation_id": rng.choice([base.correlation_id, _tricky_text(rng, 50)])}
        )
        now = datetime(2026, 12, 2, 6, i % 60, tzinfo=rng.choice([UTC, timezone(timedelta(hours=-5))]))
        sender = rng.choice(["support@shop.example"] * 3 + ["Support <support@shop.example>"])
        direct = render_reply(command, sender, now, "ana@shop.example")
        if direct is None:
            continue
        written += 1
        try:
            built: object = build_message(command, sender, now, to="ana@shop.example").as_bytes()
        except Exception as exc:  # noqa: BLE001 - a refusal the direct writer must not have skipped
            built = exc
        assert direct == built, (command.payload, command.correlation_id, sender)
    assert written > 500  # the plain case is exercised, not only the fallback
