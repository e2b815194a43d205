"""Bounded views of e-mails: the excerpt a step gets, and the conversation (thread) the state keeps.

Every size is bounded whatever the input: a command carries at most `BODY_EXCERPT_BYTES` of the
e-mail's body (a journal entry embeds the input once and each command encoded, so a body copied
into a command whole would put a large e-mail over the record limit; and a model cannot use more),
and the state keeps at most `MAX_CONVERSATION_MESSAGES` messages of at most `HISTORY_EXCERPT_BYTES`
each, `MAX_CONVERSATION_BYTES` in all, plus the digests of the last `MAX_SEEN_MESSAGES` message
IDs (to recognise a message delivered again). Cuts are on a character boundary of the UTF-8 text.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from customer_email.events import ConversationMessage, Email

__all__ = [
    "BODY_EXCERPT_BYTES",
    "HISTORY_EXCERPT_BYTES",
    "MAX_CONVERSATION_MESSAGES",
    "MAX_CONVERSATION_BYTES",
    "MAX_SEEN_MESSAGES",
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "cut_utf8",
    "excerpt",
    "message_digest",
    "remember",
    "customer_message",
    "support_message",
]

BODY_EXCERPT_BYTES = 16 * 1024  # of the e-mail being answered: what classify and draft-reply see
HISTORY_EXCERPT_BYTES = 2 * 1024  # of each earlier message of the conversation
MAX_CONVERSATION_MESSAGES = 20  # the oldest are dropped first
MAX_CONVERSATION_BYTES = 48 * 1024  # excerpts, subjects and message IDs of the kept messages
MAX_SEEN_MESSAGES = 256  # message ID digests kept to refuse a message delivered again
MAX_LABELS = 20  # upstream tags carried along (nothing decides on them)
MAX_LABEL_CHARS = 100


def cut_utf8(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` bytes of UTF-8, on a character boundary; and whether it was cut."""
    data = text.encode("utf-8", "replace")  # a lone surrogate counts as one byte ("?"), never raises
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True  # "ignore" drops only the split last character


def excerpt(email: Email) -> tuple[Email, int | None]:
    """The e-mail as the process keeps it and the steps get it, and the whole body's size if it was cut.

    The body is cut to at most `BODY_EXCERPT_BYTES`, the labels to `MAX_LABELS` of `MAX_LABEL_CHARS`;
    the size (UTF-8 bytes) is None when the body is whole.
    """
    body, cut = cut_utf8(email.body, BODY_EXCERPT_BYTES)
    labels = [cut_utf8(label, MAX_LABEL_CHARS)[0] for label in email.labels[:MAX_LABELS]]
    bounded = Email.model_validate({**email.model_dump(), "body": body, "labels": labels})
    return bounded, (len(email.body.encode("utf-8", "replace")) if cut else None)


def message_digest(message_id: str) -> str:
    """A short, fixed-size stand-in for a message ID (the dedupe list stays bounded whatever the IDs)."""
    return hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:32]


def _size(message: ConversationMessage) -> int:
    return sum(len(s.encode("utf-8", "replace")) for s in (message.excerpt, message.subject, message.message_id))


def remember(
    conversation: Sequence[ConversationMessage], message: ConversationMessage
) -> list[ConversationMessage]:
    """The conversation with `message` appended, the oldest dropped past the bounds (the newest is kept)."""
    kept = [*conversation, message][-MAX_CONVERSATION_MESSAGES:]
    total = sum(_size(m) for m in kept)
    while len(kept) > 1 and total > MAX_CONVERSATION_BYTES:
        total -= _size(kept.pop(0))
    return kept


def customer_message(email: Email, sender: str, episode: int, *, cut: bool = False) -> ConversationMessage:
    """A customer's e-mail as a conversation entry (`sender` is its parsed address; `cut`: its body is an excerpt)."""
    text, shortened = cut_utf8(email.body, HISTORY_EXCERPT_BYTES)
    return ConversationMessage(
        role="customer",
        message_id=email.message_id,
        sender=sender,
        subject=email.subject,
        received_at=email.received_at,
        excerpt=text,
        truncated=shortened or cut,
        episode=episode,
    )


def support_message(
    message_id: str, sender: str, subject: str, body: str, sent_at: datetime, episode: int
) -> ConversationMessage:
    """A reply that was sent, as a conversation entry."""
    text, cut = cut_utf8(body, HISTORY_EXCERPT_BYTES)
    return ConversationMessage(
        role="support",
        message_id=message_id,
        sender=sender,
        subject=subject,
        received_at=sent_at,
        excerpt=text,
        truncated=cut,
        episode=episode,
    )
