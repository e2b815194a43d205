"""`pm.avro_write`: the compiled writer's bytes are fastavro's, for every event type and for values at
the edges of each encoding; a value it does not take as is falls back to fastavro (same bytes or the
same CodecError), never to different bytes."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from test_codec import sample_events

from pm import codec
from pm.avro_write import WriteMismatch, compile_writer
from pm.codec import CodecError, decode, encode
from pm.events import JournalEntry, TimerSpec

SCHEMA = parse_schema(
    {
        "type": "record",
        "name": "t.Outer",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "flag", "type": "boolean"},
            {"name": "ratio", "type": "double"},
            {"name": "count", "type": "int"},
            {"name": "total", "type": "long"},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "blob", "type": "bytes"},
            {"name": "note", "type": ["null", "string"]},
            {"name": "fallback", "type": ["long", "null"]},
            {"name": "from", "type": "string"},  # a Python keyword: read with getattr
            {
                "name": "inner",
                "type": ["null", {"type": "record", "name": "t.Inner", "fields": [{"name": "n", "type": "long"}]}],
            },
            {"name": "inners", "type": {"type": "array", "items": "t.Inner"}},
            {"name": "names", "type": {"type": "array", "items": "string"}},
        ],
    }
)


def _fastavro(schema: Any, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema, record)
    return out.getvalue()


def _random_record(rng: random.Random) -> dict[str, Any]:
    def text() -> str:
        return "".join(rng.choice("aé€😀z\x00") for _ in range(rng.choice([0, 1, 63, 64, 300])))

    def number(bits: int) -> int:
        return rng.choice([0, 1, -1, 63, 64, -64, -65, 2 ** (bits - 1) - 1, -(2 ** (bits - 1)), rng.randint(-(10**9), 10**9)])

    return {
        "id": text(),
        "flag": rng.random() < 0.5,
        "ratio": rng.choice([0.0, -1.5, 1e300, rng.random()]),
        "count": number(32),
        "total": number(64),
        "when": datetime(1970, 1, 1, tzinfo=UTC)
        + timedelta(milliseconds=rng.choice([0, -1, -86_400_001, 1_764_000_000_123, rng.randint(-(10**12), 10**13)])),
        "blob": rng.randbytes(rng.choice([0, 5, 63, 64, 8191, 8192, 20_000])),  # one, two, three length bytes
        "note": rng.choice([None, text()]),
        "fallback": rng.choice([None, number(64)]),
        "from": text(),
        "inner": rng.choice([None, {"n": number(64)}]),
        "inners": [{"n": number(64)} for _ in range(rng.choice([0, 1, 63, 64, 200]))],
        "names": [text() for _ in range(rng.choice([0, 2, 70]))],
    }


def _as_object(value: Any) -> Any:
    """The record as attributes (what a pydantic model offers), nested records included."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _as_object(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_as_object(v) for v in value]
    return value


def test_random_records_are_written_byte_for_byte_like_fastavro() -> None:
    writer = compile_writer(SCHEMA)
    assert writer is not None
    rng = random.Random(20261202)
    for _ in range(400):
        record = _random_record(rng)
        assert writer.write(_as_object(record)) == _fastavro(SCHEMA, record)


def test_every_event_type_is_compiled_and_encodes_to_fastavros_bytes() -> None:
    events = sample_events()
    assert len({type(e).TYPE for e in events}) >= 20
    known = codec.registry()
    for event in events:
        info = codec.schema_for(type(event).TYPE)
        expected = info.header + _fastavro(info.parsed, event.model_dump(mode="python"))
        assert encode(event) == expected, type(event).TYPE
        assert known.writers[info.header] is not None, f"{type(event).TYPE} fell back to fastavro"
        assert decode(encode(event)) == event


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", b"bytes, not a string"),
        ("count", 2**31),  # an Avro int is 32 bits
        ("total", -(2**63) - 1),
        ("total", "12"),
        ("flag", 1),
        ("total", True),  # fastavro writes it as 1 in a long, refuses it in `long | None`: its call
        ("fallback", False),
        ("ratio", 1),
        ("blob", bytearray(b"x")),
        ("names", ("a", "b")),
        ("when", datetime(2026, 1, 1)),  # naive: fastavro would read it in local time
        ("id", "\udc80"),  # a lone surrogate is not UTF-8
    ],
)
def test_a_value_the_writer_does_not_take_as_is_is_a_mismatch(field: str, value: Any) -> None:
    writer = compile_writer(SCHEMA)
    assert writer is not None
    record = _random_record(random.Random(1))
    record[field] = value
    with pytest.raises(WriteMismatch):
        writer.write(_as_object(record))


def test_a_missing_attribute_is_a_mismatch() -> None:
    writer = compile_writer(SCHEMA)
    assert writer is not None
    fields = vars(_as_object(_random_record(random.Random(2))))
    del fields["names"]
    with pytest.raises(WriteMismatch, match="missing"):
        writer.write(SimpleNamespace(**fields))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns when dumping the odd values on purpose
def test_an_event_the_writer_refuses_goes_through_fastavro() -> None:
    """A model built without validation: fastavro encodes what it can and names what it cannot."""
    entry = next(e for e in sample_events() if isinstance(e, JournalEntry))
    # A tuple where the schema has an array: the writer refuses it, fastavro takes any sequence.
    odd = entry.model_copy(update={"payload": entry.payload.model_copy(update={"commands": tuple(entry.payload.commands)})})
    assert encode(odd) == encode(entry)
    broken = entry.model_copy(update={"payload": entry.payload.model_copy(update={"process_version": "seven"})})
    with pytest.raises(CodecError, match="cannot encode JournalEntry"):
        encode(broken)


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "map", "values": "long"},
        {"type": "enum", "name": "t.E", "symbols": ["A"]},
        ["null", "string", "long"],
        {"type": "fixed", "name": "t.F", "size": 4},
        {"type": "int", "logicalType": "date"},
    ],
)
def test_a_schema_outside_what_pm_generates_is_not_compiled(field_type: Any) -> None:
    schema = parse_schema({"type": "record", "name": "t.R", "fields": [{"name": "x", "type": field_type}]})
    assert compile_writer(schema) is None


def test_timer_specs_in_an_entry_keep_their_millisecond_timestamps() -> None:
    entry = next(e for e in sample_events() if isinstance(e, JournalEntry))
    due = datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)  # before the epoch: a negative long
    spec = TimerSpec(timer_id="t-1", name="step-timeout:x", due_at=due)
    moved = entry.model_copy(update={"payload": entry.payload.model_copy(update={"timers_scheduled": [spec]})})
    info = codec.schema_for("JournalEntry")
    assert encode(moved) == info.header + _fastavro(info.parsed, moved.model_dump(mode="python"))
    assert decode(encode(moved)).payload.timers_scheduled[0].due_at == due
