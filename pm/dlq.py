"""The dead-letter record every component writes to `pm.dlq` for a record it cannot process.

One shape for all writers (PM, step consumers, tools): a `DlqRecord` event carrying the
original key and value, plus the reason in headers so operators can filter without decoding.
"""

from __future__ import annotations

from datetime import datetime

from pm.events import DlqRecord, DlqRecordPayload, derive_id

__all__ = ["DLQ_TOPIC", "dead_letter", "DlqHeaders"]

DLQ_TOPIC = "pm.dlq"

DlqHeaders = list[tuple[str, str | bytes | None]]


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    *,
    reason: str,
    error_type: str,
    failed_by: str,
    now: datetime,
) -> tuple[DlqRecord, DlqHeaders]:
    """The record (logical source `topic`) and its `dlq.*` headers; the event ID derives from the source."""
    source = f"{topic}/{partition}/{offset}"
    text_key = key.decode("utf-8", "replace") if key else ""
    record = DlqRecord(
        event_id=derive_id("dlq", topic, partition, offset),
        correlation_id=text_key or source,
        occurred_at=now,
        payload=DlqRecordPayload(
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            key=key,
            value=value,
            reason=reason,
            error_type=error_type,
            failed_by=failed_by,
        ),
    )
    headers: DlqHeaders = [
        ("dlq.reason", reason.encode()),
        ("dlq.error_type", error_type.encode()),
        ("dlq.source", source.encode()),
        ("dlq.failed_by", failed_by.encode()),
    ]
    return record, headers
