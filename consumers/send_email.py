"""send-email: the reply over SMTP, at most once per command, even across crashes.

The ledger gets `sending` (durably: fsync'd) before the SMTP transaction starts and `sent` (the
server's response to DATA and the Message-ID) after it, written at once and fsync'd with the next
`sending` (a process crash keeps it; a power loss can take it back to `sending`). A command found
in `sending` means a previous run died mid-transaction: the message may or may not have gone out, so
the result is an *uncertain* `StepFailed` (retryable=False) for a human, never a resend.
A command found in `sent` (crash after SMTP, before the result was recorded) gets its
`EmailSent` rebuilt from the ledger, without sending again. When the server refuses
the sender, recipient or data with an explicit reply code, nothing was sent: the entry
becomes `not_sent` and the error is transient (4xx) or permanent (5xx).

The Message-ID derives from the command ID (`<command_id@pm.local>`), so the receiving
side can also dedupe. Fault injection for tests and the chaos harness:
`PM_FAULT_SEND_EMAIL=hang-after-data` makes the handler hang after the server accepted the
message and before `sent` is recorded (kill -9 it there).

The recipient is `parse_address(command.payload.to)`: exactly one plain address, no display
name. The `To` header and the SMTP envelope recipient (RCPT TO) are that same string, so a
spoofed value such as `"victim@shop.example" <attacker@evil.example>` or a list
`attacker@evil.example, victim@shop.example` can never redirect the reply: it is refused as
a PermanentError before anything is sent or recorded in the ledger.

Connections are pooled, one per worker thread, reused for up to `MAX_MESSAGES_PER_CONNECTION`
messages (a new connection per message, with its EHLO and a `getfqdn` lookup, was most of this
step's CPU). A pooled connection the server has closed fails at MAIL FROM, before anything was
transferred: it is replaced once and the message goes out on a fresh one. A failure after DATA
was sent stays uncertain, pooled or not.
"""

from __future__ import annotations

import binascii
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from datetime import datetime
from email import quoprimime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime
from functools import lru_cache

from customer_email.addresses import AddressError, parse_address
from customer_email.events import EmailSent, EmailSentPayload, Step
from customer_email.settings import EmailSettings
from pm.config import Config
from pm.events import Event
from pm.steps.handler import PermanentError, TransientError, failed_result, result_event
from pm.steps.ledger import Ledger

__all__ = [
    "SENDING",
    "SENT",
    "NOT_SENT",
    "FAULT_ENV",
    "message_id_for",
    "build_message",
    "render_reply",
    "SendEmailHandler",
    "build_handler",
]

SENDING = "sending"
SENT = "sent"
NOT_SENT = "not_sent"
FAULT_ENV = "PM_FAULT_SEND_EMAIL"
MESSAGE_ID_DOMAIN = "pm.local"
MAX_MESSAGES_PER_CONNECTION = 100  # servers commonly cap messages per session; reconnect before


@lru_cache(maxsize=1)
def _local_hostname() -> str:
    """The EHLO name, looked up once per process (smtplib calls getfqdn on every connect)."""
    return socket.getfqdn() or "localhost"


def message_id_for(command_id: str) -> str:
    return f"<{command_id}@{MESSAGE_ID_DOMAIN}>"


def _angle(message_id: str) -> str:
    message_id = message_id.strip()
    return message_id if message_id.startswith("<") else f"<{message_id}>"


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, each header's class made once: `HeaderRegistry.__getitem__` builds
    a new class with `type()` for every header set (~40 us, a fifth of building a reply). Same classes,
    same parsing and checks (a CR or LF in a value is still refused)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        made = self._made.get(name.lower())
        if made is None:
            made = self._made[name.lower()] = super().__getitem__(name)
        return made


_POLICY = default_policy.clone(header_factory=_HeaderClasses())


def build_message(command: Event, sender: str, now: datetime, *, to: str | None = None) -> EmailMessage:
    """The reply; `To` is `to` or else `parse_address(payload.to)` (AddressError when refused)."""
    payload = command.payload
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = to if to is not None else parse_address(payload.to, field="to")
    message["Subject"] = payload.subject
    message["Message-ID"] = message_id_for(payload.command_id)
    message["Date"] = format_datetime(now)
    if payload.in_reply_to:
        message["In-Reply-To"] = _angle(payload.in_reply_to)
        message["References"] = _angle(payload.in_reply_to)
    message["X-PM-Correlation-ID"] = command.correlation_id
    message.set_content(payload.body)
    return message


# The headers `render_reply` writes itself: printable ASCII on one line within the policy's length, no
# encoded-word lookalike ("=?"), not empty. Anything else goes through `build_message`, whose header
# parsing encodes, folds and refuses.
_PLAIN_LINE_LENGTH: int = _POLICY.max_line_length or 78
# A command ID as `derive_id` makes them (a UUID); any other Message-ID goes through the header parser.
_PLAIN_ID = re.compile(r"[0-9A-Za-z]+(?:-[0-9A-Za-z]+)*")
_BODY_HEADERS = b'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: '
_BASE64_CHUNK = (_PLAIN_LINE_LENGTH // 4) * 3  # input bytes per base64 line of at most max_line_length


def _plain_header(name: str, value: str) -> str | None:
    line = f"{name}: {value}"
    if (
        len(line) > _PLAIN_LINE_LENGTH
        or not line.isascii()
        or not line.isprintable()
        or "=?" in value
        or not value
    ):
        return None
    return line


def _text_body(text: str) -> tuple[str, bytes]:
    """The body's transfer encoding and encoded bytes, by the heuristic `EmailMessage.set_content` uses
    for text with the default policy (7bit, else 8bit for short lines, else the shorter of QP and base64)."""
    lines = text.encode("utf-8").splitlines()
    whole = b"\n".join(lines) + b"\n"
    if max((len(line) for line in lines), default=0) <= _PLAIN_LINE_LENGTH:
        return ("7bit" if whole.isascii() else "8bit"), whole
    # The choice is made on the first ten lines, as the standard library makes it.
    sniff = whole if len(lines) <= 10 else b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), _PLAIN_LINE_LENGTH)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        chunks = range(0, len(whole), _BASE64_CHUNK)
        return "base64", b"".join(binascii.b2a_base64(whole[i : i + _BASE64_CHUNK]) for i in chunks)
    if sniff is whole:
        return "quoted-printable", sniff_qp.encode("ascii")
    encoded = quoprimime.body_encode(whole.decode("latin-1"), _PLAIN_LINE_LENGTH)
    return "quoted-printable", encoded.encode("ascii")


def render_reply(command: Event, sender: str, now: datetime, to: str) -> bytes | None:
    """The reply's bytes, exactly as `build_message(...).as_bytes()` makes them, written directly (that
    builds and parses every header: ~1.3 ms of CPU per reply against ~50 us here).

    Only for plain headers (see `_plain_header`), `sender` and `to` bare addresses as `parse_address`
    returns them; None otherwise, and the caller builds the message with `build_message`.
    """
    payload = command.payload
    if not _PLAIN_ID.fullmatch(payload.command_id):
        return None
    headers = [
        ("From", sender),
        ("To", to),
        ("Subject", payload.subject),
        ("Message-ID", message_id_for(payload.command_id)),
        ("Date", format_datetime(now)),
    ]
    if payload.in_reply_to:
        reference = _angle(payload.in_reply_to)
        headers += [("In-Reply-To", reference), ("References", reference)]
    headers.append(("X-PM-Correlation-ID", command.correlation_id))
    lines = []
    for name, value in headers:
        line = _plain_header(name, value)
        if line is None:
            return None
        lines.append(line)
    try:
        if parse_address(sender, field="from") != sender or parse_address(to, field="to") != to:
            return None
        cte, body = _text_body(payload.body)
    except (AddressError, UnicodeError):
        return None  # build_message says why
    head = "\n".join(lines).encode("ascii")
    return b"%s\n%s%s\nMIME-Version: 1.0\n\n%s" % (head, _BODY_HEADERS, cte.encode("ascii"), body)


class SendEmailHandler:
    step = Step.SEND_EMAIL

    def __init__(self, config: Config, timeout: float = 10.0) -> None:
        self.config = config
        self.settings = EmailSettings.of(config)
        self.timeout = timeout
        self.ledger: Ledger | None = None
        self._pool = threading.local()  # .smtp, .used: this worker thread's connection

    def use_ledger(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def handle(self, command: Event, now: datetime) -> Event:
        if self.ledger is None:
            raise RuntimeError("send-email needs the consumer's ledger (use_ledger) before handling")
        payload = command.payload
        command_id = payload.command_id
        entry = self.ledger.get(command_id)
        if entry is not None and entry.state == SENT:
            detail = entry.detail
            return self._sent(
                command,
                now,
                str(detail.get("to", payload.to)),  # the recipient recorded at `sending`
                str(detail["message_id"]),
                str(detail["smtp_response"]),
            )
        if entry is not None and entry.state == SENDING:
            return failed_result(
                command,
                self.step,
                now,
                reason="uncertain: a previous run stopped during the SMTP transaction; the reply may or may "
                "not have been delivered, so it is not sent again automatically",
                retryable=False,
                uncertain=True,
                errors=[f"sending since {entry.detail.get('since', '?')} to {entry.detail.get('to', '?')}"],
            )
        try:
            to = parse_address(payload.to, field="to")
        except AddressError as exc:  # a spoofed or malformed recipient: never retried, nothing recorded
            raise PermanentError(f"refused recipient: {exc}") from exc
        message, message_id = self._reply(command, now, to)
        smtp, pooled = self._session()  # nothing sent yet: failures here are plain errors
        self.ledger.mark(command_id, SENDING, message_id=message_id, to=to, since=now.isoformat())
        try:
            try:
                response = self._transaction(smtp, message, to)
            except _Stale:
                if not pooled:
                    raise
                self._discard()  # the server closed the idle connection: one fresh try
                smtp, _ = self._session()
                response = self._transaction(smtp, message, to)
        except _Stale as stale:  # broke off before DATA: nothing was transferred
            self._discard()
            self.ledger.mark(command_id, NOT_SENT, reason=str(stale))
            raise TransientError(f"SMTP connection lost before the message was sent: {stale}") from stale
        except _Refused as refused:
            self._reset()
            self.ledger.mark(command_id, NOT_SENT, reason=str(refused))
            if refused.code >= 500:
                raise PermanentError(f"SMTP server refused the message: {refused}") from refused
            raise TransientError(f"SMTP server deferred the message: {refused}") from refused
        except (smtplib.SMTPException, OSError) as exc:  # mid-transaction: delivered or not, we cannot tell
            self._discard()
            return failed_result(
                command,
                self.step,
                now,
                reason=f"uncertain: SMTP transaction broke off ({type(exc).__name__}: {exc}); "
                "the reply may or may not have been delivered",
                retryable=False,
                uncertain=True,
            )
        if os.environ.get(FAULT_ENV) == "hang-after-data":
            while True:  # fault injection: the process is killed here, between the SMTP DATA and `sent`
                time.sleep(3600)
        # Not synced on its own (the next `sending` mark's sync covers it): a power loss right here leaves
        # the entry `sending`, which escalates as uncertain and never sends twice. kill -9 keeps it.
        self.ledger.mark(command_id, SENT, durable=False, smtp_response=response, message_id=message_id)
        return self._sent(command, now, to, message_id, response)

    def _reply(self, command: Event, now: datetime, to: str) -> tuple[bytes, str]:
        """The reply's bytes and Message-ID: written directly when plain, else built and checked."""
        sender = self.settings.reply_from
        raw = render_reply(command, sender, now, to)
        if raw is not None:
            return raw, message_id_for(command.payload.command_id)
        message = build_message(command, sender, now, to=to)
        _check_recipient(message, to)  # before the ledger and SMTP: a mismatch sends nothing
        return message.as_bytes(), str(message["Message-ID"])

    def _session(self) -> tuple[smtplib.SMTP, bool]:
        """This thread's connection (True: reused from the pool) or a new one."""
        smtp: smtplib.SMTP | None = getattr(self._pool, "smtp", None)
        used = int(getattr(self._pool, "used", 0))
        if smtp is not None and used >= MAX_MESSAGES_PER_CONNECTION:
            self._discard(polite=True)
            smtp = None
        pooled = smtp is not None
        if smtp is None:
            smtp, used = self._connect(), 0
        self._pool.smtp, self._pool.used = smtp, used + 1
        return smtp, pooled

    def _reset(self) -> None:
        """After a refusal the session is still good: RSET it for the next message, or drop it."""
        smtp: smtplib.SMTP | None = getattr(self._pool, "smtp", None)
        if smtp is None:
            return
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._discard()

    def _discard(self, *, polite: bool = False) -> None:
        smtp: smtplib.SMTP | None = getattr(self._pool, "smtp", None)
        self._pool.smtp, self._pool.used = None, 0
        if smtp is None:
            return
        try:
            if polite:
                smtp.quit()
            else:
                smtp.close()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def close(self) -> None:
        """Close this thread's pooled connection (worker shutdown)."""
        self._discard(polite=True)

    def _connect(self) -> smtplib.SMTP:
        config = self.settings
        try:
            smtp: smtplib.SMTP
            if config.smtp_ssl:
                smtp = smtplib.SMTP_SSL(
                    config.smtp_host,
                    config.smtp_port,
                    local_hostname=_local_hostname(),
                    timeout=self.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(
                    config.smtp_host, config.smtp_port, local_hostname=_local_hostname(), timeout=self.timeout
                )
            smtp.ehlo()
            if config.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if config.smtp_user:
                smtp.login(config.smtp_user, config.smtp_password)
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentError(f"SMTP login refused for {config.smtp_user!r}: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(
                f"SMTP server {config.smtp_host}:{config.smtp_port} unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        return smtp

    def _transaction(self, smtp: smtplib.SMTP, message: bytes, to: str) -> str:
        """MAIL, RCPT, DATA; returns the server's reply to DATA.

        `_Refused` when refused before delivery, `_Stale` when the connection broke before DATA.
        """
        try:
            code, reply = smtp.mail(self.settings.reply_from)
            if code != 250:
                raise _Refused(code, f"MAIL FROM: {code} {reply.decode(errors='replace')}")
            code, reply = smtp.rcpt(to)
            if code not in (250, 251):
                raise _Refused(code, f"RCPT TO: {code} {reply.decode(errors='replace')}")
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Stale(f"{type(exc).__name__}: {exc}") from exc
        try:
            code, reply = smtp.data(message)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354): the content never went
            raise _Refused(exc.smtp_code, f"DATA: {exc.smtp_code} {exc.smtp_error!r}") from exc
        # smtplib returns the reply to the content whatever its code (only `sendmail` checks it): a
        # 4xx/5xx here is the server refusing the message (greylisting, content filter, size), not
        # a delivery. Anything that is neither an acceptance nor a refusal (a garbled reply) leaves
        # us unable to tell: uncertain, like a connection lost at this point.
        text = reply.decode(errors="replace")
        if 400 <= code < 600:
            raise _Refused(code, f"end of DATA: {code} {text}")
        if not 200 <= code < 300:
            raise smtplib.SMTPResponseException(code, f"unexpected reply to the message content: {text}")
        return f"{code} {text}"

    def _sent(self, command: Event, now: datetime, to: str, message_id: str, smtp_response: str) -> Event:
        payload = command.payload
        return result_event(
            command,
            EmailSent,
            EmailSentPayload(
                command_id=payload.command_id,
                attempt=payload.attempt,
                to=to,  # where it went: the parsed address, not the raw `payload.to`
                message_id=message_id,
                smtp_response=smtp_response,
            ),
            now,
        )


def _check_recipient(message: EmailMessage, to: str) -> None:
    """The `To` header the reader sees must parse back to the envelope recipient (RCPT TO) exactly."""
    headers = [str(h) for h in message.get_all("To", [])]
    try:
        same = headers == [to] and parse_address(headers[0], field="To header") == to
    except AddressError:
        same = False
    if not same:
        raise PermanentError(f"To header {headers!r} does not match the envelope recipient {to!r}; not sent")


class _Stale(Exception):
    """The connection broke before DATA: the message was not transferred."""


class _Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def build_handler(config: Config, *, timeout: float = 10.0) -> SendEmailHandler:
    return SendEmailHandler(config, timeout=timeout)
