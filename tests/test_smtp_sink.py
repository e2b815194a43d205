"""The local SMTP sink stores what it receives in a standard Maildir."""

from __future__ import annotations

import mailbox
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from consumers.smtp_sink import SmtpSink
from pm.broker import free_port


def test_message_lands_in_maildir(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "support@example.com"
    message["To"] = "jane@example.com"
    message["Subject"] = "hello"
    message["Message-ID"] = "<x1@pm.local>"
    message.set_content("body text")
    with SmtpSink(tmp_path / "mail", port=free_port()) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.send_message(message)
        received = sink.messages()
    assert len(received) == 1
    (stored,) = mailbox.Maildir(str(tmp_path / "mail"))  # readable by any Maildir reader
    assert stored["Message-ID"] == "<x1@pm.local>" and stored["Return-Path"] == "<support@example.com>"
    assert stored["X-Envelope-To"] == "jane@example.com" and "body text" in stored.get_payload()


def test_the_sink_parses_each_address_once_and_answers_as_aiosmtpd_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sink remembers aiosmtpd's parse of MAIL FROM / RCPT TO arguments (a class definition and the
    # header parser per command): the same answer for every argument, good or bad, and one parse each.
    from aiosmtpd.smtp import SMTP

    from consumers.smtp_sink import MaildirHandler, _Server

    server = _Server(MaildirHandler(tmp_path / "mail"))
    plain = SMTP(MaildirHandler(tmp_path / "mail2"))
    args = ["<jane@example.com>", "jane@example.com", "<a@b> SIZE=10", "<>", "<broken", "x" * 70 + "@e.example", ""]
    _Server._addresses.clear()
    calls: list[str] = []
    original = SMTP._getaddr

    def counted(self: SMTP, arg: str) -> tuple[str | None, str | None]:
        calls.append(arg)
        return original(self, arg)

    monkeypatch.setattr(SMTP, "_getaddr", counted)
    first = [server._getaddr(arg) for arg in args]
    again = [server._getaddr(arg) for arg in args]
    monkeypatch.undo()
    assert first == again == [plain._getaddr(arg) for arg in args]
    assert calls == args  # each parsed once
