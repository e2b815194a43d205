"""Approval authenticity: the documented signature format, the verifier's refusals, keys on disk."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from customer_email.events import EmailReceived, EmailReceivedPayload
from pm.approvals import (
    BAD_SIGNATURE,
    NO_REVIEWERS,
    REVIEWER_NOT_ALLOWED,
    UNKNOWN_KEY,
    UNSIGNED,
    ApprovalKeyError,
    ApprovalVerifier,
    add_local_reviewers,
    build_decision,
    canonical_bytes,
    ensure_local_key,
    format_timestamp,
    key_file,
    load_keys,
    load_reviewers,
    signing_key,
)
from pm.codec import decode, encode
from pm.config import Config, load_config
from pm.events import ApprovalDecided

NOW = datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC)


def decision(**overrides: object) -> ApprovalDecided:
    values: dict[str, object] = {
        "correlation_id": "<msg-1@example.com>",
        "approval_id": "appr-1",
        "decision": "approve",
        "reviewer": "alice",
        "draft_hash": "ab" * 32,
        "policy_version": "refund-2026-01",
        "key_id": "k1",
        "secret": "s3cret-one",
        "now": NOW,
    }
    values.update(overrides)
    return build_decision(**values)  # type: ignore[arg-type]


def verifier(tmp_path: Path, reviewers: tuple[str, ...] = ("alice", "bob"), **keys: str) -> ApprovalVerifier:
    config = Config(state_dir=tmp_path, approval_keys=keys or {"k1": "s3cret-one"}, reviewers=reviewers)
    return ApprovalVerifier(config)


def resigned_copy(event: ApprovalDecided, **payload_changes: object) -> ApprovalDecided:
    """The event with payload fields changed but the old signature kept (what a tamperer produces)."""
    return event.model_copy(update={"payload": event.payload.model_copy(update=payload_changes)})


# ---------------------------------------------------------------- the documented format


def test_signature_is_hmac_sha256_over_the_documented_canonical_json() -> None:
    event = decision(decision="edit", edited_body='Hej Zoë,\n"refund" <ok> & done', reason=None)
    expected_text = (
        '{"approval_id":"appr-1","correlation_id":"<msg-1@example.com>",'
        '"decided_at":"2026-11-24T01:02:03.456Z","decision":"edit","draft_hash":"' + "ab" * 32 + '",'
        '"edited_body":"Hej Zoë,\\n\\"refund\\" <ok> & done","key_id":"k1",'
        '"policy_version":"refund-2026-01","reason":null,"reviewer":"alice"}'
    )
    assert canonical_bytes(event.correlation_id, event.payload) == expected_text.encode("utf-8")
    expected_sig = hmac.new(b"s3cret-one", expected_text.encode("utf-8"), hashlib.sha256).hexdigest()
    assert event.payload.signature == expected_sig
    assert event.payload.key_id == "k1"
    assert event.payload.decided_at == datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=UTC)
    assert event.occurred_at == event.payload.decided_at


def test_format_timestamp_is_utc_millis_z() -> None:
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"
    naive_local = datetime(2026, 1, 2, 3, 4, 5, 999999)
    assert format_timestamp(naive_local) == "2026-01-02T03:04:05.999Z"


def test_signed_decision_survives_the_wire() -> None:
    event = decision(decision="reject", reason="tone is wrong", causation_id="req-event-1")
    decoded = decode(encode(event))
    assert decoded == event
    assert verifier(Path("/nonexistent-state"))(decoded) is None


def test_event_ids_are_unique_per_decision() -> None:
    assert decision().event_id != decision().event_id


# ---------------------------------------------------------------- verifier refusals


def test_valid_decision_passes_and_other_events_are_ignored(tmp_path: Path) -> None:
    check = verifier(tmp_path)
    assert check(decision()) is None
    email = EmailReceived(
        event_id="e1",
        correlation_id="c1",
        occurred_at=NOW,
        payload=EmailReceivedPayload(
            message_id="c1", sender="a@b.c", recipient="s@b.c", subject="s", body="b", received_at=NOW
        ),
    )
    assert check(email) is None


def test_each_bad_decision_is_refused_with_its_own_reason(tmp_path: Path) -> None:
    check = verifier(tmp_path)
    good = decision()
    cases = {
        "unsigned": resigned_copy(good, signature="", key_id=""),
        "signature without key": resigned_copy(good, key_id=""),
        "tampered decision": resigned_copy(good, decision="reject"),
        "tampered hash": resigned_copy(good, draft_hash="cd" * 32),
        "tampered body": resigned_copy(decision(decision="edit", edited_body="a"), edited_body="b"),
        "other correlation": good.model_copy(update={"correlation_id": "<other@example.com>"}),
        "wrong key": decision(secret="not-the-secret"),
        "unknown key id": decision(key_id="k9"),
        "not allowed": decision(reviewer="mallory"),
        "garbage signature": resigned_copy(good, signature="zz\u00e9"),
    }
    reasons = {name: check(event) or "" for name, event in cases.items()}  # "" (accepted) fails every check
    assert reasons["unsigned"].startswith(f"{UNSIGNED}:")
    assert reasons["signature without key"].startswith(f"{UNSIGNED}:")
    for name in ("tampered decision", "tampered hash", "tampered body", "other correlation", "wrong key"):
        assert reasons[name].startswith(f"{BAD_SIGNATURE}:"), name
    assert reasons["garbage signature"].startswith(f"{BAD_SIGNATURE}:")
    assert reasons["unknown key id"].startswith(f"{UNKNOWN_KEY}:") and "'k9'" in reasons["unknown key id"]
    assert (
        reasons["not allowed"].startswith(f"{REVIEWER_NOT_ALLOWED}:")
        and "'mallory'" in reasons["not allowed"]
    )
    codes = {r.split(":")[0] for r in reasons.values()}
    assert codes == {UNSIGNED, BAD_SIGNATURE, UNKNOWN_KEY, REVIEWER_NOT_ALLOWED}


def test_forged_signature_from_an_unlisted_reviewer_is_a_signature_failure_first(tmp_path: Path) -> None:
    reason = verifier(tmp_path)(decision(reviewer="mallory", secret="guess"))
    assert reason is not None and reason.startswith(BAD_SIGNATURE)


def test_empty_allow_list_refuses_everything_and_says_how_to_configure(tmp_path: Path) -> None:
    reason = verifier(tmp_path, reviewers=())(decision())
    assert reason is not None and reason.startswith(f"{NO_REVIEWERS}:")
    assert "PM_REVIEWERS" in reason


def test_key_rotation_both_keys_verify(tmp_path: Path) -> None:
    check = verifier(tmp_path, old="old-secret", new="new-secret")
    assert check(decision(key_id="old", secret="old-secret")) is None
    assert check(decision(key_id="new", secret="new-secret")) is None
    # A decision signed with the old secret but claiming the new key ID is not accepted.
    reason = check(decision(key_id="new", secret="old-secret"))
    assert reason is not None and reason.startswith(BAD_SIGNATURE)


def test_keys_and_reviewers_from_environment() -> None:
    config = load_config(
        env={"PM_APPROVAL_KEYS": "a:one, b:two", "PM_REVIEWERS": "alice, bob"}, config_file=None
    )
    check = ApprovalVerifier(config)
    assert check.key_ids == ("a", "b")
    assert check(decision(key_id="b", secret="two", reviewer="bob")) is None
    assert check(decision(key_id="b", secret="one", reviewer="bob")) is not None


# ---------------------------------------------------------------- local key file


def test_local_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path / "state")
    key_id, secret, created = ensure_local_key(config)
    assert created and key_id.startswith("local-") and len(secret) == 64
    path = key_file(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["keys"] == {key_id: secret}
    assert ensure_local_key(config) == (key_id, secret, False)
    assert ensure_local_key(Config(state_dir=tmp_path / "other"))[0] != key_id  # random, not derived


def test_configured_keys_come_first_and_win_over_local_ones(tmp_path: Path) -> None:
    base = Config(state_dir=tmp_path)
    local_id, local_secret, _ = ensure_local_key(base)
    config = Config(state_dir=tmp_path, approval_keys={"prod": "p", local_id: "override"})
    assert load_keys(config) == {"prod": "p", local_id: "override"}
    assert signing_key(config) == ("prod", "p")
    assert signing_key(base) == (local_id, local_secret)
    with pytest.raises(ApprovalKeyError, match="no approval key 'nope'"):
        signing_key(config, "nope")
    with pytest.raises(ApprovalKeyError, match="pm approvals keygen"):
        signing_key(Config(state_dir=tmp_path / "empty"))


def test_local_reviewers_extend_the_allow_list(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path, reviewers=("alice",))
    ensure_local_key(config)
    assert add_local_reviewers(config, ["carol", " ", "carol"]) == ("carol",)
    assert load_reviewers(config) == ("alice", "carol")
    assert stat.S_IMODE(key_file(config).stat().st_mode) == 0o600


def test_verifier_picks_up_a_key_generated_after_it_started(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path, reviewers=("alice",))
    check = ApprovalVerifier(config)
    assert check.key_ids == ()
    key_id, secret, _ = ensure_local_key(config)
    assert check(decision(key_id=key_id, secret=secret)) is None
    assert check(decision(key_id=key_id, secret="wrong")) is not None


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path)
    key_file(config).write_text("{not json")
    with pytest.raises(ApprovalKeyError, match="unreadable"):
        load_keys(config)
