"""`pm inspect`: a process's state and timeline from the journal; the JSON form is a stable contract."""

from __future__ import annotations

import json

import pytest
from test_replay import Journal, Scenario, _run

from pm.config import Config
from pm.kafka import make_producer


@pytest.fixture
def journal(topics: Config) -> Journal:
    return Journal(topics, make_producer(topics, "test-journal"))


def test_inspect_json_contract(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    cid = "<inspect-1@mail.example>"
    journal.run(Scenario(cid, intent="refund_request"))
    journal.run(Scenario("<someone-else@mail.example>", intent="other"))
    code, out, _ = _run(journal.config, capsys, "inspect", cid, "--json")
    assert code == 0
    data = json.loads(out)  # exactly one object
    assert data["correlation_id"] == cid
    assert data["status"] == "sent"
    assert data["process"] == "customer-email" and data["version"] == 2
    assert data["state"]["approval"]["decision"] == "approve"
    events = data["events"]
    for row in events:
        assert {"kind", "type", "event_id", "offset", "occurred_at"} <= row.keys()
    inputs = [r for r in events if r["kind"] == "input"]
    assert [r["type"] for r in inputs] == [
        "EmailReceived",
        "EmailClassified",
        "OrderFetched",
        "RefundPolicyFetched",
        "ReplyDrafted",
        "ApprovalDecided",
        "EmailSent",
    ]
    assert [r["event_id"] for r in inputs] == [e.event_id for e in journal.inputs[cid]]
    assert all(r["outcome"] == "applied" for r in inputs)
    assert inputs[-1]["status"] == "sent" and inputs[4]["status"] == "waiting_for_approval"
    commands = [r for r in events if r["kind"] == "command"]
    assert [(r["type"], r["step"], r["attempt"]) for r in commands] == [
        ("ClassifyEmail", "classify", 1),
        ("FetchOrder", "fetch-order", 1),
        ("FetchRefundPolicy", "fetch-refund-policy", 1),
        ("DraftReply", "draft-reply", 1),
        ("SendEmail", "send-email", 1),
    ]
    # A command sits at the journal offset of the input that decided it.
    send = commands[-1]
    assert send["offset"] == inputs[5]["offset"]
    assert [r["type"] for r in events if r["kind"] == "published"] == ["ApprovalRequested"]
    offsets = [r["offset"] for r in inputs]
    assert offsets == sorted(offsets)


def test_inspect_text_and_unknown_id(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    cid = "<inspect-2@mail.example>"
    journal.run(Scenario(cid, intent="other"))
    code, out, _ = _run(journal.config, capsys, "inspect", cid)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{cid}: escalated (intent 'other' is not handled automatically")
    assert any("command ClassifyEmail step=classify attempt=1" in line for line in lines)
    assert any(line.strip().startswith("cancel timer") for line in lines)
    assert '    stage: "done"' in lines
    code, _, err = _run(journal.config, capsys, "inspect", "<nobody@mail.example>")
    assert code == 2 and "no journal entries for correlation ID" in err
