"""A local SMTP server (aiosmtpd) that stores every message it receives in a standard Maildir.

For the demo and tests: `pm run service smtp-sink --port N --maildir DIR`. Any mail client or
`mailbox.Maildir(DIR)` reads what arrived. Each stored message gets `Return-Path` and
`X-Envelope-To` headers from the SMTP envelope; the server answers DATA with
`250 OK: queued as <maildir key>`, which send-email records in its ledger.

For tests and fault drills the sink can misbehave on purpose (`mode`, or `script(...)` for the next
transactions): `defer` answers DATA with a 4xx (nothing stored), `refuse` with a 5xx (nothing
stored), `drop-after-data` stores the message and then drops the connection without answering, the
worst case for a sender (delivered, but never told). The default, `accept`, is the plain sink.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from customer_email.settings import EmailSettings
from pm.config import Config
from pm.errors import PmError
from pm.signals import stop_on_signals

__all__ = ["ACCEPT", "DEFER", "REFUSE", "DROP_AFTER_DATA", "Mode", "MaildirHandler", "SmtpSink", "main"]

Mode = Literal["accept", "defer", "refuse", "drop-after-data"]
ACCEPT: Mode = "accept"
DEFER: Mode = "defer"  # 451: a transient refusal, nothing stored
REFUSE: Mode = "refuse"  # 554: a permanent refusal, nothing stored
DROP_AFTER_DATA: Mode = "drop-after-data"  # stored, then the connection drops before the reply
MODES: tuple[Mode, ...] = (ACCEPT, DEFER, REFUSE, DROP_AFTER_DATA)
DEFER_REPLY = "451 4.3.0 Temporary failure, try again later"
REFUSE_REPLY = "554 5.7.1 Message refused"


class MaildirHandler:
    """aiosmtpd handler: one Maildir message per accepted DATA (runs on the controller's event loop thread).

    `mode` decides how DATA is answered (see the module doc); modes queued with `script` apply to
    the next transactions first, one each. `transactions` counts every DATA received, answered or
    not. `on_data(envelope)`, when set, is called before DATA is answered (tests use it to look at
    what the sender recorded before it started the transaction).
    """

    def __init__(self, maildir: Path, mode: Mode = ACCEPT) -> None:
        self.maildir = mailbox.Maildir(str(maildir), create=True)
        self.mode: Mode = _checked(mode)
        self.transactions = 0
        self.peers: list[Any] = []  # the client address of each DATA (a reused connection repeats it)
        self.on_data: Callable[[Any], None] | None = None
        self._script: deque[Mode] = deque()
        self._lock = threading.Lock()

    def script(self, *modes: Mode) -> None:
        """Answer the next transactions with these modes, one each, then with `mode` again."""
        with self._lock:
            self._script.extend(_checked(m) for m in modes)

    def _next_mode(self) -> Mode:
        with self._lock:
            self.transactions += 1
            return self._script.popleft() if self._script else self.mode

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        mode = self._next_mode()
        self.peers.append(session.peer)
        if self.on_data is not None:
            self.on_data(envelope)
        if mode == DEFER:
            return DEFER_REPLY
        if mode == REFUSE:
            return REFUSE_REPLY
        raw = envelope.original_content or envelope.content
        # The message as received, the envelope as two header lines in front: parsing and re-generating
        # it (email.message, a deep copy in mailbox) cost this stand-in ~4 ms of CPU per message.
        head = f"Return-Path: <{_one_line(envelope.mail_from)}>\r\nX-Envelope-To: {_one_line(', '.join(envelope.rcpt_tos))}\r\n"
        key = self.maildir.add(head.encode() + (raw if isinstance(raw, bytes) else raw.encode()))
        if mode == DROP_AFTER_DATA:
            server.transport.abort()  # no reply: the client cannot tell whether the message went out
            await asyncio.Event().wait()  # cancelled by aiosmtpd once it sees the connection lost
        return f"250 OK: queued as {key}"


def _one_line(text: str) -> str:
    """An envelope value as one header line (SMTP commands cannot carry CR/LF; never trust that)."""
    return text.replace("\r", " ").replace("\n", " ")


def _checked(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"unknown smtp sink mode {mode!r}; one of {', '.join(MODES)}")
    return mode


class _Server(SMTP):
    """aiosmtpd's server with its address parsing remembered. `SMTP._getaddr` defines a `typing.Protocol`
    class and runs the e-mail header parser for every MAIL FROM and RCPT TO (~45 % of this sink's CPU),
    while a sink sees the same few addresses again and again. The answer depends only on the argument
    and `local_part_limit`, so it is the same answer; the memo is bounded."""

    _addresses: dict[tuple[str, int], tuple[str | None, str | None]] = {}
    MEMO_SIZE = 1024

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        key = (arg, self.local_part_limit)
        known = self._addresses.get(key)
        if known is None:
            known = super()._getaddr(arg)
            if len(self._addresses) >= self.MEMO_SIZE:
                self._addresses.clear()
            self._addresses[key] = known
        return known


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _Server(self.handler, **self.SMTP_kwargs)


class SmtpSink:
    """The server on `host:port` (port 0 is not supported by aiosmtpd's readiness check: pick a free one)."""

    def __init__(self, maildir: Path, host: str = "127.0.0.1", port: int = 8025, mode: Mode = ACCEPT) -> None:
        self.maildir = Path(maildir)
        self.handler = MaildirHandler(self.maildir, mode)
        self.controller = _Controller(self.handler, hostname=host, port=port)

    @property
    def mode(self) -> Mode:
        return self.handler.mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self.handler.mode = _checked(value)

    @property
    def transactions(self) -> int:
        """DATA commands received so far (answered or not)."""
        return self.handler.transactions

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
    parser.add_argument(
        "--mode", choices=MODES, default=ACCEPT, help="how DATA is answered (fault drills; default: accept)"
    )
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else EmailSettings.of(config).smtp_port
    maildir = args.maildir or (config.state_dir / "maildir")
    stop = stop_on_signals()
    try:
        sink = SmtpSink(maildir, args.host, port, mode=args.mode).start()
    except (OSError, RuntimeError) as exc:
        raise PmError(f"smtp sink: cannot listen on {args.host}:{port}: {exc}") from exc
    faults = "" if args.mode == ACCEPT else f" (mode {args.mode})"
    print(f"smtp sink: smtp://{args.host}:{port}, Maildir {maildir}{faults}", flush=True)
    stop.wait()
    sink.stop()
    print("smtp sink: stopped", flush=True)
    return 0
