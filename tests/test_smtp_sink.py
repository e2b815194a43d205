"""The local SMTP sink stores what it receives in a standard Maildir."""

from __future__ import annotations

import mailbox
import smtplib
from email.message import EmailMessage
from pathlib import Path

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
