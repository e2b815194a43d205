"""One e-mail address out of an untrusted header value, or a clear refusal (pure, no I/O).

Why so strict: a sender like `"victim@shop.example" <attacker@evil.example>` or
`attacker@evil.example, victim@shop.example` must never be taken for the victim, nor
reach SMTP as a recipient list. `parse_address` accepts exactly one mailbox, returns its
addr-spec lower-cased (`Jane Doe <Jane@Example.com>` -> `jane@example.com`) and raises
`AddressError` (a ValueError) naming the rule that failed. Refused:

- not a str; empty or only whitespace; longer than 998 characters (RFC 5322 line limit);
- any control character (CR, LF, NUL, TAB, DEL, C1, U+2028/U+2029): header injection;
- comments in parentheses outside quoted strings, e.g. `jane@example.com (victim@shop.example)`:
  the standard parsers disagree on them (one drops them, one makes them the display name)
  and nothing legitimate needs them;
- not exactly one address by either parser: lists (`a@x, b@y`, `a@x; b@y`), a bare address
  followed by an angle address (`victim@shop.example <attacker@evil.example>`), group syntax
  (`undisclosed: a@x.example;`), nothing at all (`<>`);
- any defect reported by `email.headerregistry` (or an exception from it);
- a display name that, after RFC 2047 decoding and NFKC, contains "@" (also "＠", "﹫"),
  i.e. anything that could be read as an address, or a control character;
- an empty local part or domain; a non-ASCII addr-spec (also full-width look-alikes);
- a local part that is not a conservative dot-atom (letters, digits, `. _ + - = '`; no `%`
  or `!` relay routing, no shell characters, no leading `-`; quoted local parts such as
  `"victim@shop.example"@evil.example` are refused), or is longer than 64 characters;
- a domain that is an IP literal (`[127.0.0.1]`), has no dot (`localhost`), has an empty
  label (`example..com`, trailing dot), a label that is not LDH (letters, digits, inner
  hyphens, at most 63), an all-numeric top-level label, or is longer than 253 characters;
- an addr-spec longer than 254 characters;
- `email.utils.getaddresses([value], strict=True)` (a mirror of its checks on interpreters
  without `strict`) not yielding the same single address: a parser differential is itself
  an attack signal (CVE-2023-27043).
"""

from __future__ import annotations

import email.utils
import functools
import re
import unicodedata
from email.headerregistry import AddressHeader
from email.policy import default as _default_policy

__all__ = ["AddressError", "MAX_ADDRESS_CHARS", "MAX_HEADER_CHARS", "parse_address", "same_address"]

MAX_ADDRESS_CHARS = 254  # RFC 5321 path limit minus the angle brackets
MAX_HEADER_CHARS = 998  # RFC 5322 line limit
MAX_LOCAL_CHARS = 64
MAX_DOMAIN_CHARS = 253

# A conservative dot-atom: letters, digits and . _ + - = ' only. RFC 5322 allows more, but `%` and `!`
# are relay routing on some MTAs (percent hack, bang paths: `jane%evil.example@shop.example`
# delivers elsewhere), and `| \` $ { } ~ # & * / ? ^` only serve shell and pipe tricks; a leading `-` is
# an option to a sendmail command line.
_DOT_ATOM = re.compile(r"[A-Za-z0-9_+=']+(?:[.-][A-Za-z0-9_+=']+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_AT_SIGNS = ("@", "\uff20", "\ufe6b")  # "@", full-width "＠", small "﹫"
# Python >= 3.11.10 / 3.12.5 (and distribution backports) have getaddresses(strict=True), and
# there strict is the default: the lenient count must ask for strict=False explicitly.
_HAS_STRICT = bool(getattr(email.utils, "supports_strict_parsing", False))
_LENIENT: dict[str, bool] = {"strict": False} if _HAS_STRICT else {}


class AddressError(ValueError):
    """An address that is refused; the message is `field: what is wrong`."""


def parse_address(value: str, *, field: str = "address") -> str:
    """The single addr-spec in `value`, lower-cased, without display name; `AddressError` otherwise."""
    if not isinstance(value, str):
        raise AddressError(f"{field}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_HEADER_CHARS:  # before the cache, which must never hold a huge value
        raise AddressError(f"{field}: {len(value)} characters, at most {MAX_HEADER_CHARS} allowed")
    address, reason = _parse(value)
    if reason is not None:
        raise AddressError(f"{field}: {reason}")
    return address


class _Refused(Exception):
    """Why `_parse` refused a value (the caller adds the field name)."""


@functools.lru_cache(maxsize=1024)
def _parse(value: str) -> tuple[str, str | None]:
    """(address, None) or ("", reason). Memoised: the rules check the same few addresses several times
    per decision, and the header parser is the costliest part of a decision. Values are at most
    MAX_HEADER_CHARS long (checked by the caller), so the cache holds at most ~1 MiB."""
    try:
        return _parse_uncached(value), None
    except _Refused as refused:
        return "", str(refused)


def _parse_uncached(value: str) -> str:
    refuse = _Refused
    for char in value:
        if _is_control(char):
            raise refuse(f"control character U+{ord(char):04X} not allowed")
    if not value.strip():
        raise refuse("empty, one address required")
    if _has_comment(value):
        raise refuse("comments in parentheses are not allowed")
    try:
        header = _default_policy.header_factory("To", value)
    except Exception as exc:  # the parser raises IndexError/ValueError on some malformed input
        raise refuse(f"cannot be parsed as an address ({type(exc).__name__})") from exc
    defects = header.defects
    if not isinstance(header, AddressHeader):  # "To" always gives one; keeps mypy and a future policy honest
        raise refuse("cannot be parsed as an address")
    if any(group.display_name is not None for group in header.groups):
        raise refuse("group syntax (name: ...;) not allowed")
    # Count with both parsers: the lenient one sees "a@x <b@y>" as the two addresses it is.
    count = max(len(header.addresses), sum(1 for _, addr in _lenient(value) if addr))
    if count != 1:
        raise refuse(f"{count} addresses, exactly one allowed")
    (address,) = header.addresses
    if not address.addr_spec.isascii():  # before the defects: says more than "NonASCIILocalPartDefect"
        raise refuse(f"{address.addr_spec!r} is not ASCII")
    if defects:
        raise refuse(f"malformed address ({defects[0]})")
    name = unicodedata.normalize("NFKC", address.display_name or "")
    raw_name = address.display_name or ""
    if any(sign in name or sign in raw_name for sign in _AT_SIGNS):
        raise refuse(f"display name {raw_name!r} looks like an address; not allowed")
    if any(_is_control(char) for char in name):
        raise refuse("control character in the display name")
    local, domain = address.username, address.domain
    if not local:
        raise refuse("empty local part")
    if not domain:
        raise refuse("empty domain")
    if not _DOT_ATOM.fullmatch(local):
        raise refuse(f"local part {local!r} is not a plain dot-atom")
    if len(local) > MAX_LOCAL_CHARS:
        raise refuse(f"local part has {len(local)} characters, at most {MAX_LOCAL_CHARS} allowed")
    domain = domain.lower()
    problem = _domain_problem(domain)
    if problem:
        raise refuse(problem)
    normalised = f"{local.lower()}@{domain}"
    if len(normalised) > MAX_ADDRESS_CHARS:
        raise refuse(f"address has {len(normalised)} characters, at most {MAX_ADDRESS_CHARS} allowed")
    second = _strict(value)
    if len(second) != 1 or second[0][1].lower() != normalised:
        raise refuse(f"parsers disagree ({normalised!r} vs {[a for _, a in second]!r}); refused")
    return normalised


def same_address(a: str, b: str) -> bool:
    """Both parse (see `parse_address`) and name the same mailbox; False when either is refused."""
    try:
        return parse_address(a) == parse_address(b)
    except AddressError:
        return False


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _unquoted(value: str) -> str:
    """`value` without quoted strings (and the escapes in them): what the parsers see as structure."""
    out: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted:
            out.append(char)
    return "".join(out)


def _has_comment(value: str) -> bool:
    structure = _unquoted(value)
    return "(" in structure or ")" in structure


def _domain_problem(domain: str) -> str | None:
    if domain.startswith("[") or domain.endswith("]"):
        return f"IP-literal domain {domain!r} not allowed"
    if len(domain) > MAX_DOMAIN_CHARS:
        return f"domain has {len(domain)} characters, at most {MAX_DOMAIN_CHARS} allowed"
    labels = domain.split(".")
    if len(labels) < 2:
        return f"domain {domain!r} has no dot"
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"domain {domain!r} has an invalid label {label!r}"
    if labels[-1].isdigit():  # 10.0.0.1 without brackets is an IP address, not a domain
        return f"domain {domain!r} has a numeric top-level label"
    return None


def _lenient(value: str) -> list[tuple[str, str]]:
    return email.utils.getaddresses([value], **_LENIENT)


def _strict(value: str) -> list[tuple[str, str]]:
    """`getaddresses([value], strict=True)`, or the same checks by hand where the interpreter lacks them."""
    if _HAS_STRICT:
        return [pair for pair in email.utils.getaddresses([value], strict=True) if pair != ("", "")]
    # Mirror of CPython's strict mode (gh-102988): balanced parentheses outside quoted names,
    # one result per comma outside quoted names, no "[" left in a parsed address.
    structure = _unquoted(value)
    depth = 0
    for char in structure:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return []
    if depth:
        return []
    result = email.utils.getaddresses([value])
    if len(result) != 1 + structure.count(",") or any("[" in addr for _, addr in result):
        return []
    return [pair for pair in result if pair != ("", "")]
