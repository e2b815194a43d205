"""parse_address / same_address: one plain mailbox or a refusal that says why (pure, no broker)."""

from __future__ import annotations

import email.utils

import pytest

from customer_email import addresses
from customer_email.addresses import MAX_ADDRESS_CHARS, AddressError, parse_address, same_address

ACCEPTED = [
    ("jane@example.com", "jane@example.com"),
    ("Jane@Example.COM", "jane@example.com"),  # compared and sent lower-cased
    ("Jane Doe <Jane@Example.com>", "jane@example.com"),  # display name dropped
    ('"Doe, Jane" <jane@example.com>', "jane@example.com"),  # a comma inside quotes is no list
    ('Jane "Q" Doe <jane@example.com>', "jane@example.com"),
    ("<jane@example.com>", "jane@example.com"),
    ("  jane@example.com  ", "jane@example.com"),  # surrounding spaces are folding whitespace
    ("jane+orders@example.com", "jane+orders@example.com"),  # plus-addressing kept
    ("jane.doe@mail.example.co.uk", "jane.doe@mail.example.co.uk"),
    ("o'brien@example.ie", "o'brien@example.ie"),
    ("Jäne Dœ <jane@example.com>", "jane@example.com"),  # non-ASCII display names are fine
    ("=?utf-8?b?SsOkbmU=?= <jane@example.com>", "jane@example.com"),  # RFC 2047 name "Jäne"
    ('"a)b" <jane@example.com>', "jane@example.com"),  # a parenthesis inside quotes is no comment
    ("jane@xn--bcher-kva.example", "jane@xn--bcher-kva.example"),  # IDNs in their ASCII form
    ("a@b.c", "a@b.c"),
    ("x" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 57, None),  # exactly 250 chars
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_accepted(value: str, expected: str | None) -> None:
    assert parse_address(value) == (expected or value.strip().lower())


REJECTED = [
    # the attacks that redirected a reply
    ('"victim@shop.example" <attacker@evil.example>', "display name 'victim@shop.example' looks like an"),
    ("attacker@evil.example, victim@shop.example", "2 addresses, exactly one allowed"),
    ("victim@shop.example <attacker@evil.example>", "2 addresses, exactly one allowed"),
    ("=?utf-8?q?victim=40shop.example?= <attacker@evil.example>", "looks like an address"),
    ('"victim＠shop.example" <attacker@evil.example>', "looks like an address"),  # full-width at sign
    ('"victim﹫shop.example" <attacker@evil.example>', "looks like an address"),  # small at sign
    ('"victim@shop.example"@evil.example', "is not a plain dot-atom"),  # quoted local part
    ("=?utf-8?q?victim?=@evil.example", "malformed address"),
    ("jane=?x@evil.example", "not a plain dot-atom"),
    # comments: the two stdlib parsers disagree on them (dropped vs display name), so none at all
    ("jane@example.com (victim@shop.example)", "comments in parentheses are not allowed"),
    ("Jane (work) <jane@example.com>", "comments in parentheses are not allowed"),
    ("alice@example.org)<bob@example.org>", "comments in parentheses"),  # CVE-2023-27043 sample
    # header injection and other control characters
    ("jane@example.com\r\nBcc: x@evil.example", "control character U+000D"),
    ("jane@example.com\nBcc: x@evil.example", "control character U+000A"),
    ("jane@example.com\x00", "control character U+0000"),
    ("jane@example.com\tx", "control character U+0009"),
    ("jane@example.com\u2028", "control character U+2028"),
    ("=?utf-8?q?a=0D=0Ab?= <jane@example.com>", "cannot be parsed"),  # CR LF once decoded
    # lists and groups
    ("a@x.example; b@y.example", "2 addresses, exactly one allowed"),
    ("a@x.example, b@y.example, c@z.example", "3 addresses, exactly one allowed"),
    ("Jane <jane@example.com> x", "2 addresses"),
    ("undisclosed: a@x.example;", "group syntax"),
    ("undisclosed:;", "group syntax"),
    ("a@x.example,", "parsers disagree"),
    (",a@x.example", "malformed address"),
    # empty or broken
    ("", "empty"),
    ("   ", "empty"),
    ("<>", "malformed address (null addr-spec"),
    ("@example.com", "malformed address"),
    ("jane@", "cannot be parsed"),
    ("jane", "local part with no domain"),
    ("<jane@example.com", "missing trailing '>'"),
    ("jane@example.com>", "malformed address"),
    ("a@b@c.example", "malformed address"),
    ("jane.@example.com", "malformed address"),
    ("jane @ example . com", "malformed address"),
    ('"jane"@example.com', "parsers disagree"),  # harmless, but the two parsers disagree
    ('"a b"@example.com', "is not a plain dot-atom"),
    # domains
    ("jane@[127.0.0.1]", "IP-literal domain"),
    ("jane@localhost", "has no dot"),
    ("jane@1.2.3.4", "numeric top-level label"),
    ("jane@example..com", "malformed address"),
    ("jane@example.com.", "malformed address"),
    ("jane@-example.com", "invalid label '-example'"),
    ("jane@ex_ample.com", "invalid label 'ex_ample'"),
    ("jane@" + "a" * 64 + ".com", "invalid label"),
    # not ASCII (look-alikes)
    ("jäne@example.com", "'jäne@example.com' is not ASCII"),
    ("ｊａｎｅ@example.com", "is not ASCII"),  # full-width letters
    ("jane@exämple.com", "is not ASCII"),
    # lengths
    ("a" * 300 + "@example.com", "local part has 300 characters, at most 64"),
    ("x" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 62, "255 characters, at most 254 allowed"),
    ("x@" + ("d" * 60 + ".") * 5 + "com", "domain has 308 characters, at most 253"),
    ("x" * 999, "999 characters, at most 998 allowed"),
    # relay routing and shell characters in the local part
    ("jane%attacker.example@shop.example", "not a plain dot-atom"),  # percent hack
    ("attacker.example!jane@shop.example", "not a plain dot-atom"),  # bang path
    ("-oQ/tmp/@example.com", "not a plain dot-atom"),  # a sendmail option
    ("|cmd@example.com", "not a plain dot-atom"),
    ("`id`@example.com", "not a plain dot-atom"),
]


@pytest.mark.parametrize(("value", "reason"), REJECTED)
def test_rejected(value: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(value, field="sender")
    message = str(info.value)
    assert message.startswith("sender: ")
    assert reason in message, message
    assert not same_address(value, "jane@example.com")


def test_the_sample_tables_are_big_enough() -> None:
    assert len(ACCEPTED) >= 8 and len(REJECTED) >= 20


@pytest.mark.parametrize("value", [None, 42, b"jane@example.com", ["jane@example.com"]])
def test_not_a_string(value: object) -> None:
    with pytest.raises(AddressError, match=r"^to: expected a string, got "):
        parse_address(value, field="to")  # type: ignore[arg-type]


def test_address_error_is_a_value_error_with_the_default_field() -> None:
    with pytest.raises(ValueError, match=r"^address: 2 addresses, exactly one allowed$"):
        parse_address("a@x.example, b@y.example")


def test_max_address_chars_is_the_smtp_limit() -> None:
    assert MAX_ADDRESS_CHARS == 254
    local, labels = "x" * 64, ["d" * 63, "e" * 63, "f" * 60]  # 64 + 1 + 63 + 1 + 63 + 1 + 60 = 253
    assert len(parse_address(f"{local}@{'.'.join(labels)}")) == 253
    labels[-1] += "f"
    assert len(parse_address(f"{local}@{'.'.join(labels)}")) == 254
    labels[-1] += "f"
    with pytest.raises(AddressError, match="255 characters, at most 254"):
        parse_address(f"{local}@{'.'.join(labels)}")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("jane@example.com", "jane@example.com", True),
        ("Jane Doe <Jane@Example.com>", "jane@example.com", True),
        ('"Doe, Jane" <JANE@example.com>', "<jane@EXAMPLE.com>", True),
        ("jane@example.com", "jane+orders@example.com", False),
        ("jane@example.com", "jane@example.org", False),
        ("jane@example.com", "jane@example.com.evil.example", False),
        ('"jane@example.com" <attacker@evil.example>', "jane@example.com", False),  # refused, not equal
        ("attacker@evil.example, jane@example.com", "jane@example.com", False),
        ("jane@example.com (jane@example.com)", "jane@example.com", False),
        ("", "", False),  # both refused: never "the same"
        ("jane@localhost", "jane@localhost", False),
    ],
)
def test_same_address(a: str, b: str, same: bool) -> None:
    assert same_address(a, b) is same
    assert same_address(b, a) is same


def test_second_opinion_uses_strict_getaddresses_when_the_interpreter_has_it() -> None:
    # Both branches must refuse the parser-differential samples; the mirror runs where strict is missing.
    has_strict = bool(getattr(email.utils, "supports_strict_parsing", False))
    assert addresses._HAS_STRICT is has_strict
    for value in ("a@x.example,", "alice@example.org)<bob@example.org>", "a@x.example)"):
        assert addresses._strict(value) == []
    assert addresses._strict('"Doe, Jane" <jane@example.com>') == [("Doe, Jane", "jane@example.com")]


def test_the_mirror_agrees_with_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever this interpreter has, run the other branch too: same decisions on every sample.
    samples = [v for v, _ in ACCEPTED] + [v for v, _ in REJECTED]
    decided: dict[str, str] = {}
    for flag in (False, True):
        if flag and not hasattr(email.utils, "supports_strict_parsing"):
            break  # no strict getaddresses here: only the mirror can run
        monkeypatch.setattr(addresses, "_HAS_STRICT", flag)
        for value in samples:
            try:
                outcome = parse_address(value)
            except AddressError as exc:
                outcome = f"refused: {exc}"
            assert decided.setdefault(value, outcome) == outcome, value
