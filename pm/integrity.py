"""Is an input record where its correlation ID says it must be? (pure: the runtime DLQs what is not)

The PM keys its stores, journal and timers by partition: a process lives on
`partition_for(correlation_id)` of the co-partitioned topics. A record keyed by anything
else (or by nothing: a null key lands on a random partition) would be decided on whatever
partition it reached, splitting the process across stores and journal partitions. So the
key is not trusted blindly: it must be the envelope's correlation ID, and the record must
sit on the partition that key hashes to.
"""

from __future__ import annotations

from pm.partitioner import partition_for

__all__ = ["record_problem", "shown", "MISSING_KEY", "KEY_MISMATCH", "WRONG_PARTITION", "SHOWN_LIMIT"]

MISSING_KEY = "MissingKey"
KEY_MISMATCH = "KeyMismatch"
WRONG_PARTITION = "WrongPartition"
# Keys and correlation IDs come from upstream and may be huge or hostile: the reason lands in DLQ
# headers and logs, so echo only a bounded, escaped prefix.
SHOWN_LIMIT = 80


def shown(value: str | bytes, limit: int = SHOWN_LIMIT) -> str:
    """`repr` of at most `limit` characters/bytes of `value`, saying how long the whole was."""
    if len(value) <= limit:
        return repr(value)
    unit = "bytes" if isinstance(value, bytes) else "chars"
    return f"{value[:limit]!r}... ({len(value)} {unit})"


def record_problem(
    key: bytes | None, partition: int, partitions: int, correlation_id: str
) -> tuple[str, str] | None:
    """(error_type, reason) when the record must not be decided where it is; None when it is sound.

    `partitions` is the partition count the co-partitioned layout was built with (the runtime's
    choice; see ProcessManager.start).
    """
    if key is None:
        return (
            MISSING_KEY,
            f"record has no key; it must be keyed by its correlation ID {shown(correlation_id)}",
        )
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return KEY_MISMATCH, (
            f"key {shown(key)} is not UTF-8; it must be the correlation ID {shown(correlation_id)}"
        )
    if text != correlation_id:
        return KEY_MISMATCH, f"key {shown(text)} differs from the correlation ID {shown(correlation_id)}"
    expected = partition_for(key, partitions)
    if partition != expected:
        return WRONG_PARTITION, (
            f"key {shown(text)} belongs on partition {expected} of {partitions}, the record is on {partition}"
        )
    return None
