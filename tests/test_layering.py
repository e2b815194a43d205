"""The core knows no domain: no module under pm/ names e-mails, orders, refunds, drafts or the like.

Apps (the bundled customer e-mail, a team's own) bring their words; the core speaks of processes,
steps, commands, results, approvals and proposals. The one exception is a field name of the signed
approval contract kept from before approvals were generic (`draft_hash`: the proposal's hash).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "pm"
DOMAIN = re.compile(
    r"e-?mails?|refund\w*|\bdrafts?\b|draft_(?!hash\b)\w+|smtp\w*|\borders?\b(?! of\b| in\b| to\b| is\b| they\b| (?:it|as|on|they) \w+)"
    r"|order_\w+|customers?|\binvoices?\b|mailbox|maildir",
    re.IGNORECASE,
)
# Phrases where "order" means sequence, not a purchase.
ORDER_AS_SEQUENCE = re.compile(
    r"\b(?:in|journal|publish|read|due|start|canonical|registration|key|sort|that|same|this|one|new|random)\s+order\b"
    r"|order(?:ed|ing)?\b(?= (?:of|by|in|and|is|matters)\b|[,).:;])|\border=",
    re.IGNORECASE,
)


def _domain_words(text: str) -> list[str]:
    cleaned = ORDER_AS_SEQUENCE.sub(" ", text)
    return [m.group(0) for m in DOMAIN.finditer(cleaned)]


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_no_domain_word_in_the_core(path: Path) -> None:
    found = [(n, w) for n, line in enumerate(path.read_text().splitlines(), 1) for w in _domain_words(line)]
    assert not found, f"{path.relative_to(CORE.parent)}: domain words (line, word): {found[:10]}"


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("class EmailReceived(Event):", ["Email"]),
        ("refund_cents: int", ["refund_cents"]),
        ("the draft is approved", ["draft"]),
        ("smtp_host = 'x'", ["smtp_host"]),
        ("fetch the customer's order", ["customer", "order"]),
        ("order_id: str", ["order_id"]),
        ("in journal order, per partition", []),
        ("payload.draft_hash", []),
        ("an invoice dispute", ["invoice"]),
    ],
)
def test_the_check_sees_domain_words(text: str, hits: list[str]) -> None:
    assert _domain_words(text) == hits
