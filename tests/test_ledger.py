"""The step ledger keeps a handler's marks when the command completes, from this run or an earlier one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from consumer_kit import GatedSync

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


def _mark_in_thread(ledger: Ledger, command_id: str) -> tuple[threading.Thread, threading.Event]:
    returned = threading.Event()

    def mark() -> None:
        ledger.mark(command_id, "sending", to="a@example.com")
        returned.set()

    thread = threading.Thread(target=mark, daemon=True)
    thread.start()
    return thread, returned


def test_a_mark_returns_only_after_the_log_is_synced_and_concurrent_marks_share_a_sync(tmp_path: Path) -> None:
    # `sending` must be on disk before the SMTP transaction starts (send-email): mark returns after a
    # WAL sync that covers its write. Marks written while a sync runs wait for the next one, together.
    with Ledger(tmp_path / "l") as ledger:
        gated = GatedSync(ledger._db)
        ledger._db = gated
        first, first_returned = _mark_in_thread(ledger, "c0")
        assert gated.entered.wait(5), "mark never synced the write-ahead log"
        assert not first_returned.is_set()  # held inside its sync: not durable yet, not returned
        others = [_mark_in_thread(ledger, f"c{i}") for i in range(1, 8)]
        deadline = time.monotonic() + 10
        while ledger._written < 8 and time.monotonic() < deadline:  # all written, waiting for a sync
            time.sleep(0.01)
        assert ledger._written == 8 and not any(returned.is_set() for _, returned in others)
        gated.gate.set()
        for thread, _ in [(first, first_returned), *others]:
            thread.join(10)
        assert first_returned.is_set() and all(returned.is_set() for _, returned in others)
        assert gated.syncs == 2  # the first mark's own, then one for the seven written during it
        ledger._db = gated.db
    with Ledger(tmp_path / "l") as reopened:
        assert all((entry := reopened.get(f"c{i}")) is not None and entry.state == "sending" for i in range(8))


def test_a_mark_that_need_not_be_durable_is_synced_with_the_next_durable_one(tmp_path: Path) -> None:
    # send-email's `sent` (after SMTP) is not fsync'd alone: the next `sending` mark's sync covers it.
    with Ledger(tmp_path / "l") as ledger:
        gated = GatedSync(ledger._db)
        ledger._db = gated
        ledger.mark("c1", "sent", durable=False, smtp_response="250 ok")  # returns with the gate shut
        assert gated.syncs == 0 and ledger._synced == 0
        thread, returned = _mark_in_thread(ledger, "c2")
        assert gated.entered.wait(5)
        gated.gate.set()
        thread.join(10)
        assert returned.is_set() and gated.syncs == 1 and ledger._synced == 2  # both writes covered
        ledger._db = gated.db


def test_entries_with_a_result_carry_it_raw_and_older_base64_entries_still_read(tmp_path: Path) -> None:
    import base64
    import json

    from pm.steps.ledger import RESULT_FORMAT, LedgerEntry, LedgerError

    result = bytes(range(256)) * 12  # any bytes, "{" and the format byte included
    entry = LedgerEntry(state=COMPLETED, detail={"to": "a@example.com"}, result=result)
    raw = entry.to_bytes()
    assert raw[:1] == RESULT_FORMAT and raw.endswith(result) and len(raw) < len(result) + 64
    assert LedgerEntry.from_bytes(raw) == entry
    marked = LedgerEntry(state="sending", detail={"since": "now"})
    assert marked.to_bytes()[:1] == b"{" and LedgerEntry.from_bytes(marked.to_bytes()) == marked
    old = json.dumps(
        {"state": COMPLETED, "detail": {"to": "a@example.com"}, "result": base64.b64encode(result).decode()},
        sort_keys=True,
    ).encode()  # as ledgers were written before
    assert LedgerEntry.from_bytes(old) == entry
    with Ledger(tmp_path / "l") as ledger:
        ledger._db[b"old"] = old
        ledger._db[b"cut"] = raw[:3]
        ledger._db[b"short"] = raw[:20]
        ledger._db[b"list"] = b"[1]"
        assert ledger.get("old") == entry
        for key in ("cut", "short", "list"):
            with pytest.raises(LedgerError, match="unreadable"):
                ledger.get(key)
        ledger.complete("c1", result)
        assert ledger.get("c1") == LedgerEntry(state=COMPLETED, detail={}, result=result)
