"""A team's own process, outside this repository, run end to end with `pm --app` and nothing else.

`examples/invoices` is copied into a temporary folder (not importable from the repo), then driven
the way its team would: `pm schemas generate`, `pm topics apply`, `pm approvals keygen`, `pm run all`
(the PM and its own step consumer), events published through the Python API, a reviewer approving the
credit above the automatic limit with `pm approvals list|approve`, and `pm inspect`, `pm processes`,
`pm replay --verify` and the what-if replay on what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pm.broker import LocalBroker
from pm.config import Config
from pm.harness import Child, child_env, pm_argv

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "invoices"
APP = "invoices.app:app"
# invoice -> the outcome the rules give it (see examples/invoices/steps.py LEDGER)
CASES = {"INV-1": "credited", "INV-2": "credited", "INV-3": "rejected", "INV-404": "rejected", "INV-FLAKY": "credited"}
APPROVED = "INV-2"  # a 200.00 credit, above AUTO_CREDIT_CENTS: it waits until a reviewer approves it
REVIEWER = "alice"
BUDGET = 50.0  # seconds for the whole run (the marker below stops it at 60)


@pytest.fixture(scope="module")
def team(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Config]]:
    home = tmp_path_factory.mktemp("team")  # outside the repository
    shutil.copytree(EXAMPLE, home / "invoices", ignore=shutil.ignore_patterns("__pycache__", "schemas"))
    config = Config(
        bootstrap=broker.bootstrap,
        topic_prefix=f"inv{os.getpid()}{int(time.time() * 1000) % 100000}.",
        state_dir=home / "state",
        fetch_wait_max_ms=10,
        app=APP,
    )
    yield home, config


def pm(home: Path, config: Config, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`pm ARGS --app invoices.app:app` run from the team's folder, as the team runs it."""
    env = child_env(config, PM_APP=APP)
    result = subprocess.run(
        [*pm_argv(*args)], cwd=home, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pm {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.timeout(60)
def test_a_process_outside_the_repository_runs_end_to_end(team: tuple[Path, Config]) -> None:
    home, config = team
    deadline = time.monotonic() + BUDGET
    generated = pm(home, config, "schemas", "generate")
    assert (home / "invoices" / "schemas" / "InvoiceDisputed.avsc").exists(), generated.stdout
    assert (home / "invoices" / "schemas" / "CheckInvoice.avsc").exists()
    pm(home, config, "schemas", "check")
    applied = pm(home, config, "topics", "apply")
    assert f"{config.topic_prefix}invoice.disputed" in applied.stdout
    assert f"{config.topic_prefix}cmd.check-invoice" in applied.stdout
    assert f"{config.topic_prefix}email.received" not in applied.stdout  # only this app's topics
    # The signing key and the reviewer allow-list, in the state dir the PM shares: before the PM starts.
    keygen = pm(home, config, "approvals", "keygen", "--reviewer", REVIEWER)
    assert keygen.stdout.strip().startswith("local-") and f"allow-list: {REVIEWER}" in keygen.stderr

    runner = Child("pm-all", pm_argv("run", "all"), home / "run-all.log")
    env = child_env(config, PM_APP=APP)
    runner.proc = subprocess.Popen(
        runner.argv, cwd=home, env=env, stdout=(home / "run-all.log").open("ab"), stderr=subprocess.STDOUT
    )
    try:
        # The team's upstream publishes with pm's Python API, from the team's folder (not in this process: an
        # app's event types register once per process, and tests/test_invoice_rules.py imports the example).
        published = subprocess.run(
            [sys.executable, "-m", "invoices.publish", *CASES], cwd=home, env=env, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        assert published.stdout.strip() == "invoices"  # app.name, of the app load_app found there
        statuses = _wait_for_outcomes(home, config, runner, deadline, waiting=True)
        waiting = {**CASES, APPROVED: "waiting_for_approval"}
        assert statuses == {f"dispute-{k}": v for k, v in waiting.items()}, runner.tail(40)

        # The reviewer's side: the request as the invoice app presents it, approved with the CLI.
        listed = json.loads(pm(home, config, "approvals", "list", "--json").stdout)
        assert [r["correlation_id"] for r in listed] == [f"dispute-{APPROVED}"], listed
        request = listed[0]
        assert request["title"] == "Credit 200.00 USD on INV-2 to ACME"
        assert request["proposal_type"] == "CreditNote" and request["policy_version"] == "credit-v1"
        assert request["proposal"] == {"invoice_id": "INV-2", "credit_cents": 20_000, "currency": "USD",
                                       "note": "Overcharge on INV-2"}  # fmt: skip
        shown = {f["label"]: f["value"] for f in request["display"]}
        assert shown["Overcharged (ledger)"] == "200.00 USD" and shown["Customer"] == "ACME"
        approved = pm(home, config, "approvals", "approve", request["approval_id"], "--reviewer", REVIEWER)
        assert f"published ApprovalDecided approve for approval {request['approval_id']}" in approved.stdout
        assert "warning" not in approved.stderr, approved.stderr  # a key and an allowed reviewer

        statuses = _wait_for_outcomes(home, config, runner, deadline, waiting=False)
        assert statuses == {f"dispute-{k}": v for k, v in CASES.items()}, runner.tail(40)
        assert json.loads(pm(home, config, "approvals", "list", "--json").stdout) == []

        credited = json.loads(pm(home, config, "inspect", f"dispute-{APPROVED}", "--json").stdout)
        assert credited["status"] == "credited" and credited["reason"] == f"approve by {REVIEWER}"
        assert credited["state"]["credit"]["credit_cents"] == 20_000
        inputs = [(e["type"], e["outcome"]) for e in credited["events"] if e["kind"] == "input"]
        assert ("ApprovalDecided", "applied") in inputs
        assert [e["type"] for e in credited["events"] if e["kind"] == "published"] == ["ApprovalRequested"]

        inspected = json.loads(pm(home, config, "inspect", "dispute-INV-FLAKY", "--json").stdout)
        assert inspected["status"] == "credited"
        types = [e["type"] for e in inspected["events"]]
        assert types.count("StepFailed") == 1 and types.count("InvoiceChecked") == 1  # retried once

        verified = pm(home, config, "replay", "dispute-INV-1", "--verify")
        assert "verify: ok" in verified.stderr
        everything = pm(home, config, "replay", "--all", "--verify").stdout
        assert f"checked {len(CASES)} processes" in everything and "0 differ" in everything
    finally:
        runner.stop()

    # What-if: a stricter rule (no automatic credit) would end the credited disputes differently.
    (home / "stricter.py").write_text(
        "from invoices import rules\n"
        "rules.AUTO_CREDIT_CENTS = 0\n"
        "STRICT = rules.InvoiceDisputeProcess()\n"
    )
    what_if = pm(home, config, "replay", "--all", "--definition", "stricter:STRICT", "--json", check=False)
    report = json.loads(what_if.stdout)
    assert report["processes"] == len(CASES), what_if.stderr
    # INV-1 and INV-FLAKY would now wait for a reviewer; INV-2 was approved either way.
    assert report["terminal_changed"] == [{"recorded": "credited", "new": "waiting_for_approval", "count": 2}]


def _wait_for_outcomes(
    home: Path, config: Config, runner: Child, deadline: float, *, waiting: bool
) -> dict[str, Any]:
    """`pm processes --json` once nothing runs any more (and, unless `waiting`, nothing waits for a human)."""
    settled = {"running"} if waiting else {"running", "waiting_for_approval"}
    statuses: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if not runner.alive():
            raise AssertionError(f"pm run all exited:\n{runner.tail(40)}")
        rows = json.loads(pm(home, config, "processes", "--json").stdout or "[]")
        statuses = {r["correlation_id"]: r["status"] for r in rows}
        if len(statuses) == len(CASES) and not settled & set(statuses.values()):
            return statuses
        time.sleep(0.5)
    raise AssertionError(f"not every dispute settled in time: {statuses}\n{runner.tail(40)}")
