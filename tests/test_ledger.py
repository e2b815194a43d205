"""The step ledger keeps a handler's marks when the command completes, from this run or an earlier one."""

from __future__ import annotations

from pathlib import Path

from pm.steps.ledger import COMPLETED, Ledger


def test_complete_keeps_the_marks_and_stores_the_result(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l") as ledger:
        assert ledger.get("c1") is None
        ledger.mark("c1", "sending", to="a@example.com")
        ledger.mark("c1", "sent", smtp_response="250 ok")
        entry = ledger.complete("c1", b"result")
        assert entry.detail == {"to": "a@example.com", "smtp_response": "250 ok"}
        stored = ledger.get("c1")
    assert stored is not None and stored.state == COMPLETED and stored.result == b"result"
    assert stored.detail == entry.detail


def test_complete_keeps_what_an_earlier_run_marked(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l") as first:
        first.mark("c1", "sending", to="a@example.com")  # then the process died
    with Ledger(tmp_path / "l") as second:  # the restart
        before = second.get("c1")
        assert before is not None and before.state == "sending"
        assert second.complete("c1", b"failed").detail == {"to": "a@example.com"}
        assert second.complete("c2", b"ok").detail == {}
