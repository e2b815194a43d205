"""Authenticity of approval decisions: signing keys, the canonical signed bytes, the verifier.

A review tool signs every `ApprovalDecided` with HMAC-SHA256; the PM verifies it at
the edge (before `decide`) with `ApprovalVerifier`. What is signed (docs/approvals.md
is the language-neutral contract):

    canonical = JSON of the object
        {"approval_id", "correlation_id", "decided_at", "decision", "draft_hash",
         "edited_body", "key_id", "policy_version", "reason", "reviewer"}
      plus "edited_fields" (a JSON object as text) when it is set
      keys sorted, no whitespace, non-ASCII as raw UTF-8 (RFC 8785 / JSON.stringify
      escaping), absent reason / edited_body as null, decided_at as
      "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC, milliseconds, as Avro timestamp-millis keeps it)
    signature = lowercase hex HMAC-SHA256(key = UTF-8 bytes of the secret, msg = UTF-8 bytes of canonical)

JSON rather than the Avro bytes so the signature survives schema evolution
(a field added to the payload later does not change what was signed) and any
language can rebuild it without an Avro library.

Keys: `config.approval_keys` (PM_APPROVAL_KEYS `kid:secret,...` or the config file)
merged with the local key file `state_dir/approval-keys.json` (`pm approvals keygen`),
which may also list reviewers for local use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pm.config import Config
from pm.errors import PmError
from pm.events import ApprovalDecided, ApprovalDecidedPayload, Event, utc_ms

__all__ = [
    "KEY_FILE_NAME",
    "UNSIGNED",
    "UNKNOWN_KEY",
    "BAD_SIGNATURE",
    "REVIEWER_NOT_ALLOWED",
    "NO_REVIEWERS",
    "ApprovalKeyError",
    "LocalKeys",
    "key_file",
    "read_local_keys",
    "ensure_local_key",
    "add_local_reviewers",
    "load_keys",
    "load_reviewers",
    "signing_key",
    "format_timestamp",
    "canonical_bytes",
    "compute_signature",
    "sign_payload",
    "build_decision",
    "ApprovalVerifier",
]

KEY_FILE_NAME = "approval-keys.json"

# Refusal reasons start with one of these codes (then ": " and the detail), so callers can tell them apart.
UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown key id"
BAD_SIGNATURE = "bad signature"
REVIEWER_NOT_ALLOWED = "reviewer not allowed"
NO_REVIEWERS = "no reviewers allowed"

_SIGNED_FIELDS = (
    "approval_id",
    "decision",
    "reviewer",
    "draft_hash",
    "policy_version",
    "reason",
    "edited_body",
    "decided_at",
    "key_id",
)
_SIGNED_IF_SET = ("edited_fields",)


class ApprovalKeyError(PmError, ValueError):
    """No usable signing key, or the local key file is unreadable; the message says what to do."""


# ---------------------------------------------------------------- keys and reviewers


@dataclass(frozen=True)
class LocalKeys:
    """What the local key file holds."""

    keys: dict[str, str]
    reviewers: tuple[str, ...]


def key_file(config: Config) -> Path:
    return Path(config.state_dir) / KEY_FILE_NAME


def read_local_keys(config: Config) -> LocalKeys:
    """The local key file, or an empty one when it does not exist."""
    path = key_file(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return LocalKeys({}, ())
    except (OSError, ValueError) as exc:
        raise ApprovalKeyError(f"approval key file {path} is unreadable: {exc}; fix or delete it") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys", {}), dict):
        raise ApprovalKeyError(
            f'approval key file {path}: expected {{"keys": {{KEY_ID: SECRET}}, "reviewers": [...]}}'
        )
    keys = {str(k): str(v) for k, v in data.get("keys", {}).items()}
    reviewers = tuple(str(r) for r in data.get("reviewers", []) if str(r).strip())
    return LocalKeys(keys, reviewers)


def _write_local_keys(config: Config, local: LocalKeys) -> Path:
    """Write atomically with mode 0600: the file holds secrets."""
    path = key_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"keys": local.keys, "reviewers": list(local.reviewers)}, out, indent=2)
        out.write("\n")
    os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask
    os.replace(tmp, path)
    return path


def ensure_local_key(config: Config) -> tuple[str, str, bool]:
    """The first key of the local key file, generating one (and the file, mode 0600) if there is none.

    Returns `(key_id, secret, created)`; callers tell the user when `created` is true.
    """
    local = read_local_keys(config)
    if local.keys:
        key_id, secret = next(iter(local.keys.items()))
        return key_id, secret, False
    key_id = f"local-{secrets.token_hex(4)}"
    secret = secrets.token_hex(32)
    _write_local_keys(config, LocalKeys({key_id: secret}, local.reviewers))
    return key_id, secret, True


def add_local_reviewers(config: Config, reviewers: list[str]) -> tuple[str, ...]:
    """Add reviewers to the local key file's allow-list; returns the whole local list."""
    local = read_local_keys(config)
    merged = tuple(dict.fromkeys([*local.reviewers, *(r.strip() for r in reviewers if r.strip())]))
    if merged != local.reviewers:
        _write_local_keys(config, LocalKeys(local.keys, merged))
    return merged


def load_keys(config: Config) -> dict[str, str]:
    """Every key that signs or verifies: configured keys first (they win on a clash), then local ones."""
    keys = dict(config.approval_keys)
    for key_id, secret in read_local_keys(config).keys.items():
        keys.setdefault(key_id, secret)
    return keys


def load_reviewers(config: Config) -> tuple[str, ...]:
    """The reviewer allow-list: `config.reviewers` (PM_REVIEWERS) plus the local key file's list."""
    return tuple(dict.fromkeys([*config.reviewers, *read_local_keys(config).reviewers]))


def signing_key(config: Config, key_id: str | None = None) -> tuple[str, str]:
    """The key a review tool signs with: `key_id` if given, else the first key (configured keys first)."""
    keys = load_keys(config)
    if key_id is not None:
        if key_id not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise ApprovalKeyError(f"no approval key {key_id!r} (known: {known}); see PM_APPROVAL_KEYS")
        return key_id, keys[key_id]
    if not keys:
        raise ApprovalKeyError(
            "no approval signing key: set PM_APPROVAL_KEYS=KEY_ID:SECRET or run `pm approvals keygen`"
        )
    return next(iter(keys.items()))


# ---------------------------------------------------------------- canonical form and signature


def format_timestamp(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds and 'Z': `2026-11-24T01:21:29.123Z`."""
    value = utc_ms(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def canonical_bytes(correlation_id: str, payload: ApprovalDecidedPayload) -> bytes:
    """The exact bytes the signature covers (the `signature` field itself excluded)."""
    fields: dict[str, Any] = {name: getattr(payload, name) for name in _SIGNED_FIELDS}
    # An edit's other fields are signed when present; absent they stay out of the
    # canonical form, so decisions signed before the fields existed still verify.
    for name in _SIGNED_IF_SET:
        if getattr(payload, name) is not None:
            fields[name] = getattr(payload, name)
    fields["decided_at"] = format_timestamp(payload.decided_at)
    fields["correlation_id"] = correlation_id
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def compute_signature(correlation_id: str, payload: ApprovalDecidedPayload, secret: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), canonical_bytes(correlation_id, payload), hashlib.sha256)
    return mac.hexdigest()


def sign_payload(
    correlation_id: str, payload: ApprovalDecidedPayload, key_id: str, secret: str
) -> ApprovalDecidedPayload:
    """`payload` with `key_id` set and `signature` computed over it."""
    unsigned = payload.model_copy(update={"key_id": key_id, "signature": ""})
    return unsigned.model_copy(update={"signature": compute_signature(correlation_id, unsigned, secret)})


def build_decision(
    *,
    correlation_id: str,
    approval_id: str,
    decision: Literal["approve", "reject", "edit"],
    reviewer: str,
    draft_hash: str,
    policy_version: str,
    key_id: str,
    secret: str,
    now: datetime | None = None,
    reason: str | None = None,
    edited_body: str | None = None,
    edited_fields: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
) -> ApprovalDecided:
    """A signed `ApprovalDecided`. The review tool is an edge: a random event ID and the wall clock are fine."""
    decided_at = utc_ms(now or datetime.now(UTC))
    payload = ApprovalDecidedPayload(
        approval_id=approval_id,
        decision=decision,
        reviewer=reviewer,
        draft_hash=draft_hash,
        policy_version=policy_version,
        reason=reason,
        edited_body=edited_body,
        edited_fields=edited_fields,
        decided_at=decided_at,
    )
    return ApprovalDecided(
        event_id=event_id or str(uuid.uuid4()),
        correlation_id=correlation_id,
        causation_id=causation_id,
        occurred_at=decided_at,
        payload=sign_payload(correlation_id, payload, key_id, secret),
    )


# ---------------------------------------------------------------- verification


class ApprovalVerifier:
    """`verifier(event) -> None | reason`: None when the event is not a decision or is authentic and allowed.

    Checks, in order: signed at all, key ID known, signature matches, reviewer on the
    allow-list. An empty allow-list refuses every decision (fail closed). Keys are
    re-read from the local key file when an unknown key ID shows up, so a key made
    with `pm approvals keygen` while the PM runs is picked up without a restart.
    """

    def __init__(
        self,
        config: Config,
        *,
        keys: Mapping[str, str] | None = None,
        reviewers: tuple[str, ...] | None = None,
    ) -> None:
        self._config = config
        self._fixed_keys = keys is not None
        self._keys = dict(keys) if keys is not None else load_keys(config)
        self._reviewers = reviewers if reviewers is not None else load_reviewers(config)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def reviewers(self) -> tuple[str, ...]:
        return self._reviewers

    def _reload(self) -> None:
        if self._fixed_keys:
            return
        try:
            self._keys = load_keys(self._config)
            self._reviewers = load_reviewers(self._config)
        except ApprovalKeyError:
            pass  # keep what we had: a broken file must not open the gate nor crash the PM

    def __call__(self, event: Event) -> str | None:
        if not isinstance(event, ApprovalDecided):
            return None
        refused = self.check_signature(event)
        if refused is not None:
            return refused
        return self.check_reviewer(event)

    def check_signature(self, event: ApprovalDecided) -> str | None:
        """Authenticity only: signed, with a known key, and the signature matches."""
        payload = event.payload
        if not payload.signature or not payload.key_id:
            return f"{UNSIGNED}: the decision carries no key_id/signature; sign it (docs/approvals.md)"
        if payload.key_id not in self._keys:
            self._reload()
        secret = self._keys.get(payload.key_id)
        if secret is None:
            return f"{UNKNOWN_KEY}: {payload.key_id!r} is not a configured approval key (PM_APPROVAL_KEYS)"
        expected = compute_signature(event.correlation_id, payload, secret)
        if not hmac.compare_digest(expected.encode(), payload.signature.lower().encode("utf-8")):
            return f"{BAD_SIGNATURE}: the signature does not match the decision under key {payload.key_id!r}"
        return None

    def check_reviewer(self, event: ApprovalDecided) -> str | None:
        """The reviewer is on the allow-list (an empty list refuses everyone)."""
        payload = event.payload
        if not self._reviewers:
            self._reload()
        if not self._reviewers:
            return (
                f"{NO_REVIEWERS}: the reviewer allow-list is empty, so every decision is refused; "
                "set PM_REVIEWERS=name1,name2 (or `reviewers:` in the config file, "
                "or `pm approvals keygen --reviewer NAME` locally)"
            )
        if payload.reviewer not in self._reviewers:
            self._reload()
        if payload.reviewer not in self._reviewers:
            return f"{REVIEWER_NOT_ALLOWED}: {payload.reviewer!r} is not on the reviewer allow-list (PM_REVIEWERS)"
        return None
