"""The fault harness (bench/chaos.py): its checks catch what they claim to, and the CI run passes.

The slow test is issue 8's CI version: 100 e-mails, 5 SIGKILLs (PM and step consumers)
under `pm run all`, every invariant checked; it runs the harness as a subprocess, as a
user would (`python -m bench.chaos --quick`), and asserts exit 0.
"""

from __future__ import annotations

import json
import mailbox
import os
import re
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.chaos import EDIT_MARKER, ChaosReport, Plan, check_mail, component_name, diff_records, supervised
from customer_email.rules import SEND_UNCERTAIN


def _record(status: str, reason: str | None = None, sent_message_id: str | None = None) -> Any:
    # check_mail reads only status, state.reason and state.sent_message_id of a ProcessRecord.
    return SimpleNamespace(
        status=status, state=SimpleNamespace(reason=reason, sent_message_id=sent_message_id)
    )


def _deliver(
    maildir: Path, cid: str, message_id: str, body: str = "Dear Jane, about order A-1001 ..."
) -> None:
    message = EmailMessage()
    message["Message-ID"] = message_id
    message["In-Reply-To"] = cid
    message["X-PM-Correlation-ID"] = cid
    message.set_content(body)
    mailbox.Maildir(maildir, create=True).add(message)


def _mail_checks(tmp_path: Path, folded: dict[str, Any], verdicts: dict[str, Any]) -> dict[str, bool]:
    report = ChaosReport(Plan.make(quick=True, seed=1))
    kinds: dict[str, Any] = {cid: "status" for cid in folded}
    check_mail(tmp_path / "maildir", kinds, folded, verdicts, report)
    return {name: ok for name, ok, _ in report.checks}


ONE = "one SMTP message per sent process, none for the others"
TWICE = "no side effect ran twice (Message-IDs unique)"


def test_mail_checks_accept_the_right_mailbox(tmp_path: Path) -> None:
    _deliver(tmp_path / "maildir", "<a@x>", "<cmd-a@pm.local>")
    _deliver(tmp_path / "maildir", "<c@x>", "<cmd-c@pm.local>")  # an uncertain send may have gone out
    _deliver(tmp_path / "maildir", "<e@x>", "<cmd-e@pm.local>", body=f"{EDIT_MARKER}\norder A-1001")
    folded = {
        "<a@x>": _record("sent", sent_message_id="<cmd-a@pm.local>"),
        "<b@x>": _record("rejected", "rejected by chaos-reviewer"),
        "<c@x>": _record("escalated", SEND_UNCERTAIN),
        "<d@x>": _record("escalated", SEND_UNCERTAIN),
        "<e@x>": _record("sent", sent_message_id="<cmd-e@pm.local>"),
    }
    assert _mail_checks(tmp_path, folded, {"<e@x>": "edit", "<b@x>": "reject"}) == {ONE: True, TWICE: True}


@pytest.mark.parametrize(
    ("deliveries", "folded", "failing"),
    [
        # a duplicate send of one command: same Message-ID twice
        (
            [("<a@x>", "<cmd-a@pm.local>")] * 2,
            {"<a@x>": _record("sent", sent_message_id="<cmd-a@pm.local>")},
            {ONE, TWICE},
        ),
        # two commands of one process both sent
        (
            [("<a@x>", "<cmd-a1@pm.local>"), ("<a@x>", "<cmd-a2@pm.local>")],
            {"<a@x>": _record("sent", sent_message_id="<cmd-a2@pm.local>")},
            {ONE},
        ),
        # sent, but nothing arrived (lost side effect)
        ([], {"<a@x>": _record("sent", sent_message_id="<cmd-a@pm.local>")}, {ONE}),
        # a rejected process sent anyway
        ([("<a@x>", "<cmd-a@pm.local>")], {"<a@x>": _record("rejected", "rejected by x")}, {ONE}),
        # escalated for another reason, yet a message went out
        ([("<a@x>", "<cmd-a@pm.local>")], {"<a@x>": _record("escalated", "order A-1 not found")}, {ONE}),
        # the message is not the one the process recorded
        (
            [("<a@x>", "<cmd-x@pm.local>")],
            {"<a@x>": _record("sent", sent_message_id="<cmd-a@pm.local>")},
            {ONE},
        ),
        # mail for a process this run never started
        (
            [("<a@x>", "<cmd-a@pm.local>"), ("<z@x>", "<cmd-z@pm.local>")],
            {"<a@x>": _record("sent", sent_message_id="<cmd-a@pm.local>")},
            {ONE},
        ),
    ],
)
def test_mail_checks_catch_violations(
    tmp_path: Path, deliveries: list[tuple[str, str]], folded: dict[str, Any], failing: set[str]
) -> None:
    mailbox.Maildir(tmp_path / "maildir", create=True)  # an empty mailbox still exists
    for cid, message_id in deliveries:
        _deliver(tmp_path / "maildir", cid, message_id)
    result = _mail_checks(tmp_path, folded, {})
    assert {name for name, ok in result.items() if not ok} == failing


def test_edit_must_reach_the_customer(tmp_path: Path) -> None:
    _deliver(tmp_path / "maildir", "<a@x>", "<cmd-a@pm.local>")  # the unedited draft went out
    folded = {"<a@x>": _record("sent", sent_message_id="<cmd-a@pm.local>")}
    assert _mail_checks(tmp_path, folded, {"<a@x>": "edit"})[ONE] is False


def test_component_names_and_supervised_children() -> None:
    assert (
        component_name([sys.executable, "-m", "pm", "run", "consumer", "send-email", "--prefix", "p."])
        == "send-email"
    )
    assert component_name([sys.executable, "-m", "pm", "run", "pm", "--bootstrap", "b"]) == "pm"
    steps = [sys.executable, "-m", "pm", "run", "consumer", "fetch-order", "classify", "--concurrency", "4"]
    assert component_name(steps) == "classify+fetch-order"  # several steps: one component (the ACL name)
    argv = [sys.executable, "-m", "pm", "run", "service", "--prefix", "p.", "smtp-sink", "--port", "1"]
    assert component_name(argv) == "smtp-sink"
    assert component_name(["sleep", "30"]) is None
    # Children of this process, found through /proc like the killer finds the supervisor's.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "run", "pm"])
    try:
        assert supervised(os.getpid()).get("pm") == child.pid
    finally:
        child.kill()
        child.wait(5)
    assert "pm" not in supervised(os.getpid())


def test_plan_sizes() -> None:
    quick, full = Plan.make(quick=True, seed=3), Plan.make(quick=False, seed=3)
    assert (quick.emails, quick.kills, full.emails, full.kills) == (100, 5, 1000, 20)
    assert quick.publish_seconds >= 15 and quick.seconds < 200  # CI: fits a 4-minute budget


@pytest.mark.slow
def test_chaos_ci_run(tmp_path: Path) -> None:
    """100 e-mails, 5 SIGKILLs, every invariant: exit 0 (about a minute on 2 cores)."""
    argv = [
        sys.executable,
        "-m",
        "bench.chaos",
        "--quick",
        "--seconds",
        "150",
        "--workdir",
        str(tmp_path / "chaos"),
    ]
    harness = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = harness.communicate(timeout=230)
    except subprocess.TimeoutExpired:
        harness.terminate()  # the harness stops its broker, supervisor and children on SIGTERM
        out, err = harness.communicate(timeout=60)
        pytest.fail(f"chaos harness still running after 230 s:\n{out[-6000:]}\n{err[-4000:]}")
    assert harness.returncode == 0, f"chaos failed:\n{out[-6000:]}\n{err[-4000:]}"
    assert len(re.findall(r"kill #\d+: SIGKILL", out)) >= 5
    assert "SIGKILL pm " in out
    assert "[FAIL]" not in out
    assert out.count("[ok]") == 8
    assert '"ok": true' in out.splitlines()[-1]


def test_store_diff_names_the_differing_fields() -> None:
    journal = {"status": "sent", "state": {"stage": "done", "attempts": {"classify": 1}}, "journal_offset": 7}
    assert diff_records(journal, json_copy(journal)) == []
    store = json_copy(journal)
    store["state"]["attempts"]["classify"] = 2
    store["journal_offset"] = -1
    assert [d.split(":")[0] for d in diff_records(journal, store)] == [
        "journal_offset",
        "state.attempts.classify",
    ]


def json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))
