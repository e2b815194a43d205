"""`ProcessRecord.snapshot`: the bytes a journal entry carries and the store keeps."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field
from pydantic_core import to_json

from pm.fold import ProcessRecord, Quarantine
from pm.process import ProcessState, Status


class Tier(StrEnum):
    GOLD = "gold"


class Line(BaseModel):
    sku: str
    amount: Decimal
    at: datetime


class RichState(ProcessState):
    tier: Tier = Tier.GOLD
    lines: tuple[Line, ...] = ()
    notes: dict[str, list[int]] = Field(default_factory=dict)
    alias_field: str = Field(default="x", alias="aliasField")


def _record(state: ProcessState) -> ProcessRecord:
    return ProcessRecord(
        correlation_id=state.correlation_id,
        process="rich",
        version=3,
        state=state,
        journal_offset=41,
        processed=["e1", "e2"],
        timers={"t1": (1_700_000_000_000, "timeout:fetch")},
    )


def _dumped(record: ProcessRecord) -> bytes:
    """What the snapshot was before it serialized the model in place: its JSON dict, dumped."""
    data = record.to_json()
    del data["journal_offset"]
    return to_json(data)


def test_a_snapshot_is_the_records_json_without_its_offset_byte_for_byte() -> None:
    state = RichState(
        correlation_id="<c1@m>",
        status=Status.WAITING_FOR_APPROVAL,
        lines=(Line(sku="ü-1 \"quoted\" \n", amount=Decimal("12.30"), at=datetime(2026, 1, 2, 3, 4, 5, 6000, UTC)),),
        notes={"k": [1, 2]},
        aliasField="y",
    )
    record = _record(state)
    assert record.snapshot() == _dumped(record)
    ended = _record(state.model_copy(update={"status": "credited", "reason": "done"}))
    assert ended.snapshot() == _dumped(ended)


def test_no_snapshot_for_a_state_json_cannot_hold_or_a_quarantined_record() -> None:
    odd = _record(RichState(correlation_id="<c2@m>", reason="lone \udc80 surrogate"))
    assert odd.snapshot() is None  # the fold re-decides such entries
    parked = _record(RichState(correlation_id="<c3@m>"))
    parked.quarantine = Quarantine(reason="r", previous_status="running", previous_reason=None)
    assert parked.snapshot() is None
