"""A local SMTP server (aiosmtpd) that stores every message it receives in a standard Maildir.

For the demo and tests: `pm run service smtp-sink --port N --maildir DIR`. Any mail client or
`mailbox.Maildir(DIR)` reads what arrived. Each stored message gets `Return-Path` and
`X-Envelope-To` headers from the SMTP envelope; the server answers DATA with
`250 OK: queued as <maildir key>`, which send-email records in its ledger.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import mailbox
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from customer_email.settings import EmailSettings
from pm.config import Config
from pm.errors import PmError
from pm.signals import stop_on_signals

__all__ = ["MaildirHandler", "SmtpSink", "main"]


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


def main(argv: list[str], config: Config) -> int:
    """`pm run service smtp-sink [--port N] [--host H] [--maildir DIR]`: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="pm run service smtp-sink", description="a local SMTP sink (Maildir)")
    parser.add_argument("--port", type=int, default=None, help="default: PM_SMTP_PORT")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 inside a container)")
    parser.add_argument("--maildir", type=Path, default=None, help="default: STATE_DIR/maildir")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else EmailSettings.of(config).smtp_port
    maildir = args.maildir or (config.state_dir / "maildir")
    stop = stop_on_signals()
    try:
        sink = SmtpSink(maildir, args.host, port).start()
    except (OSError, RuntimeError) as exc:
        raise PmError(f"smtp sink: cannot listen on {args.host}:{port}: {exc}") from exc
    print(f"smtp sink: smtp://{args.host}:{port}, Maildir {maildir}", flush=True)
    stop.wait()
    sink.stop()
    print("smtp sink: stopped", flush=True)
    return 0
