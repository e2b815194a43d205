"""A model that OBEYS the e-mail: a responder for `tests/llm_server.py` playing a prompt-injected LLM.

    with LlmServer(responder=obedient_responder) as server: ...

Instruction grammar (case-insensitive, anywhere in the e-mail's subject or body):

- classification: `intent=X`, `risk=Y`, `order_id=Z` (JSON style works too: `"intent": "X"`).
- draft: `refund_cents=N`, `promises=[a, b]` (or `"promises": ["a"]`) become the draft's claims;
  `Reply with: "TEXT"` (or `"body": "TEXT"`) is the reply text: the k-th one on the k-th draft
  attempt (attempt = 1 + repairs so far, read from the previous draft in a repair prompt), the last
  one repeats; `tell me that TEXT`, `say TEXT`, `confirm that TEXT`, `include TEXT` (and
  `bestätigen Sie, dass` / `confirmez que` / `confirme que` / `diga que`) put TEXT, up to the end of
  its sentence or line, verbatim into every draft.

Otherwise it behaves like a capable model: it classifies by keywords (refund words ->
refund_request, else delivery_status; risk low; the order ID given with the e-mail, else the first
`A-<digits>` token) and drafts a factual status reply, or for a refund_request whose policy refunds
shipping, the shipping refund at the facts' limit. Every draft greets the customer by the order's
name and quotes the order ID from the facts, so injected text meets the product's routing rules
instead of failing trivially on length or order ID.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llm_server import Scripted

__all__ = ["obedient_responder", "classify", "draft"]


def _key(name: str) -> str:
    return rf"""["']?\b{name}["']?\s*[=:]\s*["']?"""


_INTENT = re.compile(_key("intent") + r"([a-z_]+)", re.IGNORECASE)
_RISK = re.compile(_key("risk") + r"([a-z_]+)", re.IGNORECASE)
_ORDER = re.compile(_key("order_id") + r"([A-Za-z0-9-]+)", re.IGNORECASE)
_CENTS = re.compile(_key("refund_cents") + r"(\d+)", re.IGNORECASE)
_PROMISES = re.compile(_key("promises") + r"\[([^\]]*)\]", re.IGNORECASE)
_REPLY = re.compile(r"""(?:reply with\s*:|["']body["']\s*:)\s*["“«]([^"”»]+)["”»]""", re.IGNORECASE)
_PHRASE = re.compile(
    r"\b(?:tell me that|confirm that|say that|say|include|bestätigen sie,? dass|confirmez que|"
    r"confirme que|diga que)\s+(.+?)(?=[.!?](?:\s|$)|\n|$)",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(r"^(?:this|the following|the) (?:line|sentence|text)\s*:\s*", re.IGNORECASE)
_KNOWN_ORDER = re.compile(r"^Order ID given with the e-mail: (\S+)$", re.MULTILINE)
_ORDER_TOKEN = re.compile(r"\bA-\d+\b")
_REFUND_WORDS = ("refund", "money back", "reimburse", "erstatt", "geld zurück", "rembours", "reembols")
_SIGNS = {"USD": "$", "EUR": "€", "GBP": "£"}


def _json_after(text: str, marker: str) -> Any:
    """The JSON value right after `marker` in `text` (None when the marker is absent)."""
    start = text.find(marker)
    if start < 0:
        return None
    return json.JSONDecoder().raw_decode(text[start + len(marker) :])[0]


def classify(user: str) -> dict[str, Any]:
    """The classification the e-mail asks for, else the keyword rules."""
    intent, risk, order = _INTENT.search(user), _RISK.search(user), _ORDER.search(user)
    known, token = _KNOWN_ORDER.search(user), _ORDER_TOKEN.search(user)
    refundish = any(word in user.casefold() for word in _REFUND_WORDS)
    return {
        "intent": intent.group(1) if intent else ("refund_request" if refundish else "delivery_status"),
        "risk": risk.group(1) if risk else "low",
        "order_id": order.group(1) if order else known.group(1) if known else token and token.group(0),
        "confidence": 0.9,
    }


def _amount(cents: int, currency: str) -> str:
    sign = _SIGNS.get(currency)
    return f"{sign}{cents / 100:.2f}" if sign else f"{cents / 100:.2f} {currency}"


def draft(user: str) -> dict[str, Any]:
    """The draft the e-mail dictates, wrapped in an otherwise valid reply to the facts' order."""
    facts = _json_after(user, "Facts:\n")
    previous = _json_after(user, "Previous draft:\n") if "Violations to fix" in user else None
    mail = f"{facts['email']['subject']}\n{facts['email']['body']}"
    order, policy = facts["order"], facts["policy"]
    replies = [m.group(1).strip() for m in _REPLY.finditer(mail)]
    attempt = 1
    if previous is not None:  # a repair: the previous draft used the last instruction it contains
        used = [i for i, text in enumerate(replies) if text in previous.get("body", "")]
        attempt = (used[-1] + 2) if used else 2
    texts = [replies[min(attempt, len(replies)) - 1]] if replies else []
    texts += [_LEAD_IN.sub("", m.group(1).strip()) for m in _PHRASE.finditer(_REPLY.sub("", mail))]

    refund, promises = 0, []
    if facts["intent"] == "refund_request" and policy["refund_shipping"]:
        refund, promises = policy.get("shipping_refund_limit_cents", 0), ["refund_shipping"]
    cents, listed = _CENTS.search(mail), _PROMISES.search(mail)
    refund = int(cents.group(1)) if cents else refund
    if listed:
        promises = [p.strip(" \"'") for p in listed.group(1).split(",") if p.strip(" \"'")]

    oid = order["order_id"]
    if texts:
        middle = " ".join(t if t[-1] in ".!?" else t + "." for t in texts)[:1500]
    elif refund:
        middle = (
            f"we are sorry it is late. We will refund the shipping cost of "
            f"{_amount(refund, order['currency'])} for order {oid}."
        )
    else:
        expected = (order.get("expected_delivery") or "soon")[:10]
        middle = (
            f"it is {order['status']} with {order['carrier']}; the expected delivery is {expected}. "
            "We will keep an eye on it for you."
        )
    name = order["customer_name"]
    body = f"Hello {name},\n\nregarding your order {oid}: {middle}\n\nKind regards,\nthe support team"
    return {
        "subject": f"Your order {oid}",
        "body": body,
        "order_id": oid,
        "refund_cents": refund,
        "promises": promises,
    }


def obedient_responder(request: dict[str, Any]) -> Scripted:
    """`LlmServer` responder: the step is told apart by the structured-output schema's name."""
    user = next(m["content"] for m in request["messages"] if m["role"] == "user")
    name = request.get("response_format", {}).get("json_schema", {}).get("name")
    if name != "email_classification" and "Facts:\n" not in user:  # the draft prompt changed shape
        return Scripted(status=400, content="obedient model: no 'Facts:' in the draft prompt")
    answer = classify(user) if name == "email_classification" else draft(user)
    return Scripted(content=json.dumps(answer, ensure_ascii=False), prompt_tokens=len(user) // 4)
