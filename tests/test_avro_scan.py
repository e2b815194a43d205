"""`pm.avro_scan`: the wanted fields read by walking the schema equal what fastavro decodes, and a body
that is not well formed is a ScanError (never a wrong value)."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from pm.avro_scan import ScanError, compile_scanner
from pm.codec import CodecError, encode, read_fields, read_paths, registry
from pm.events import JournalEntry, JournalEntryPayload, TimerSpec

SCHEMA = parse_schema(
    {
        "type": "record",
        "name": "t.Outer",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "flag", "type": "boolean"},
            {"name": "ratio", "type": "double"},
            {"name": "small", "type": "float"},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "colour", "type": {"type": "enum", "name": "t.Colour", "symbols": ["RED", "GREEN"]}},
            {"name": "digest", "type": {"type": "fixed", "name": "t.Digest", "size": 4}},
            {"name": "tags", "type": {"type": "map", "values": "long"}},
            {
                "name": "inner",
                "type": {
                    "type": "record",
                    "name": "t.Inner",
                    "fields": [
                        {"name": "count", "type": "int"},
                        {"name": "blob", "type": ["null", "bytes"]},
                        {"name": "items", "type": {"type": "array", "items": "t.Digest"}},
                        {"name": "note", "type": ["null", "string", "long"]},
                    ],
                },
            },
            {"name": "names", "type": {"type": "array", "items": "string"}},
            {"name": "numbers", "type": {"type": "array", "items": "long"}},
            {"name": "last", "type": "string"},
        ],
    }
)
WANTED = ("id", "inner.count", "inner.blob", "inner.note", "names", "numbers", "last")


def _random_record(rng: random.Random) -> dict[str, Any]:
    def text() -> str:
        return "".join(rng.choice("aé€😀z") for _ in range(rng.choice([0, 1, 5, 70, 300])))

    return {
        "id": text(),
        "flag": rng.random() < 0.5,
        "ratio": rng.random(),
        "small": 1.5,
        "when": rng.randrange(-(2**40), 2**40),
        "colour": rng.choice(["RED", "GREEN"]),
        "digest": bytes(rng.randrange(256) for _ in range(4)),
        "tags": {text(): rng.randrange(-(2**62), 2**62) for _ in range(rng.randrange(4))},
        "inner": {
            "count": rng.randrange(-(2**31), 2**31),
            "blob": rng.choice([None, b"", bytes(rng.randrange(256) for _ in range(rng.randrange(400)))]),
            "items": [bytes(4) for _ in range(rng.randrange(200))],
            "note": rng.choice([None, text(), rng.randrange(-(2**62), 2**62)]),
        },
        "names": [text() for _ in range(rng.choice([0, 1, 3, 200]))],
        "numbers": [rng.randrange(-(2**62), 2**62) for _ in range(rng.randrange(5))],
        "last": text(),
    }


def _encode(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def test_the_scanned_fields_equal_fastavros_for_random_records() -> None:
    scanner = compile_scanner(SCHEMA, WANTED)
    assert scanner is not None
    rng = random.Random(7)
    for _ in range(300):
        record = _random_record(rng)
        found = scanner.scan(_encode(record))
        assert found == {
            "id": record["id"],
            "inner.count": record["inner"]["count"],
            "inner.blob": record["inner"]["blob"],
            "inner.note": record["inner"]["note"],
            "names": record["names"],
            "numbers": record["numbers"],
            "last": record["last"],
        }


def test_a_body_cut_short_or_with_bytes_after_it_is_an_error_at_every_length() -> None:
    scanner = compile_scanner(SCHEMA, WANTED)
    assert scanner is not None
    body = _encode(_random_record(random.Random(3)))
    for cut in range(len(body)):
        with pytest.raises(ScanError):
            scanner.scan(body[:cut])
    with pytest.raises(ScanError, match="1 bytes after the body"):
        scanner.scan(body + b"\x00")


def test_bad_lengths_branches_and_counts_are_errors() -> None:
    schema = parse_schema(
        {
            "type": "record",
            "name": "t.Small",
            "fields": [
                {"name": "s", "type": "string"},
                {"name": "u", "type": ["null", "string"]},
                {"name": "a", "type": {"type": "array", "items": "long"}},
            ],
        }
    )
    scanner = compile_scanner(schema, ("s", "u"))
    assert scanner is not None
    assert scanner.scan(b"\x02x\x02\x02y\x00") == {"s": "x", "u": "y"}
    for body, reason in [
        (b"\x01", "length of -1"),  # a negative length
        (b"\x7ex", "runs past the body"),  # 63 bytes claimed, 1 there
        (b"\x02x\x06\x00", "union branch 3"),
        (b"\x02x\x00\xfe\xff\xff\xff\x0f", "block of"),  # 2^31 longs in no bytes
        (b"\x02x\x00" + b"\xff" * 11, "varint longer"),
        (b"\x02\xff\x00\x00", "not UTF-8"),  # a wanted string that does not decode
    ]:
        with pytest.raises(ScanError, match=reason):
            scanner.scan(body)


def test_a_block_with_its_byte_size_is_stepped_over_whole() -> None:
    schema = parse_schema(
        {
            "type": "record",
            "name": "t.Sized",
            "fields": [{"name": "a", "type": {"type": "array", "items": "long"}}, {"name": "z", "type": "string"}],
        }
    )
    scanner = compile_scanner(schema, ("z",))
    assert scanner is not None
    # count -2 (zigzag 3), size 2 bytes, items 1 and 2, end of array, then "ok"
    body = b"\x03\x04\x02\x04\x00\x04ok"
    assert scanner.scan(body) == {"z": "ok"}
    reader = compile_scanner(schema, ("a", "z"))  # a wanted array: the sized block's items are read
    assert reader is not None
    assert reader.scan(body) == {"a": [1, 2], "z": "ok"}
    with pytest.raises(ScanError, match="runs past"):
        reader.scan(b"\x03\x7e\x02\x04\x00\x04ok")  # a block size beyond the body


def test_schemas_it_cannot_walk_are_refused_at_compile_time() -> None:
    nulls = parse_schema(
        {"type": "record", "name": "t.Nulls", "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}]}
    )
    assert compile_scanner(nulls, ()) is None  # the item count would be unbounded
    assert compile_scanner(SCHEMA, ("digest",)) is None  # reading a fixed is not supported
    assert compile_scanner(SCHEMA, ("tags",)) is None  # nor a map
    assert compile_scanner(SCHEMA, ("inner.items",)) is None  # nor an array of fixed
    assert compile_scanner(SCHEMA, ("nothere",)) is None


def _entry(record: bytes | None, status: str = "sent") -> JournalEntry:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 2, tzinfo=UTC)
    return JournalEntry(
        event_id="e-1",
        correlation_id="c-1",
        occurred_at=now,
        payload=JournalEntryPayload(
            process="p",
            process_version=1,
            input_topic="t",
            input_partition=0,
            input_offset=4,
            event=b"\xc3\x01event",
            outcome="applied",
            status=status,
            commands=[b"a", b"bc"],
            timers_scheduled=[TimerSpec(timer_id="t1", name="n", due_at=now)],
            timers_cancelled=["t0"],
            decided_at=now,
            record=record,
        ),
    )


@pytest.mark.parametrize("record", [None, b"", b'{"state":{}}' * 50])
def test_read_paths_of_a_journal_entry_equals_read_fields(record: bytes | None) -> None:
    value = encode(_entry(record, "running"))
    paths = ("event_id", "correlation_id", "payload.status", "payload.record")
    assert registry().latest["JournalEntry"].fingerprint == value[2:10]  # the scanned path, not the fallback
    _type, fields = read_fields(value)
    assert read_paths(value, paths) == (
        "JournalEntry",
        {"event_id": "e-1", "correlation_id": "c-1", "payload.status": "running", "payload.record": record},
    )
    assert fields["payload"]["record"] == record
    with pytest.raises(CodecError, match="corrupt JournalEntry"):
        read_paths(value[:-1], paths)
