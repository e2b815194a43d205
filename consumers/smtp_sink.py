"""A local SMTP server (aiosmtpd) that stores every message it receives in a standard Maildir.

For the demo and tests: `pm run smtp-sink --port N --maildir DIR`. Any mail client or
`mailbox.Maildir(DIR)` reads what arrived. Each stored message gets `Return-Path` and
`X-Envelope-To` headers from the SMTP envelope; the server answers DATA with
`250 OK: queued as <maildir key>`, which send-email records in its ledger.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["MaildirHandler", "SmtpSink"]


class MaildirHandler:
    """aiosmtpd handler: one Maildir message per accepted DATA (runs on the controller's event loop thread)."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = mailbox.Maildir(str(maildir), create=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(
            raw if isinstance(raw, bytes) else raw.encode(), policy=email.policy.SMTP
        )
        message["Return-Path"] = f"<{envelope.mail_from}>"
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        key = self.maildir.add(mailbox.MaildirMessage(message))
        return f"250 OK: queued as {key}"


class SmtpSink:
    """The server on `host:port` (port 0 is not supported by aiosmtpd's readiness check: pick a free one)."""

    def __init__(self, maildir: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.maildir = Path(maildir)
        self.handler = MaildirHandler(self.maildir)
        self.controller = Controller(self.handler, hostname=host, port=port)

    @property
    def host(self) -> str:
        return str(self.controller.hostname)

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[mailbox.MaildirMessage]:
        """Everything received so far (re-reads the Maildir)."""
        box = mailbox.Maildir(str(self.maildir), create=False)
        return list(box)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
