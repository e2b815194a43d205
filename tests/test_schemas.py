"""`schemas/*.avsc` (the wire contract) and the pydantic models in `pm.events` agree, and evolve compatibly.

The repo's `schemas/` holds the core types (`pm.schemas.core_event_types()`) and the bundled
customer-email app's (`customer_email.app.APP.event_types`); other tests may register more types
in `pm.events.EVENT_TYPES`, so the expected set is those two, not the global registry.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

import customer_email.events
import pm.events
from customer_email.app import APP
from pm import codec, schemas
from pm.events import Event

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
# The types whose latest schema is in the repo's schemas/: the core ones, then the bundled app's.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls for cls in (*schemas.core_event_types(), *APP.event_types)
}


def _defined_in(module: Any) -> set[str]:
    return {
        cls.TYPE
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, Event) and cls.TYPE and cls.__module__ == module.__name__
    }


def test_core_and_the_bundled_app_cover_every_event_type() -> None:
    """The core tuple is explicit: every type in pm.events is core; the app declares all of its own."""
    assert _defined_in(pm.events) == {cls.TYPE for cls in schemas.core_event_types()}
    assert _defined_in(customer_email.events) == {cls.TYPE for cls in APP.event_types}
    assert not set(schemas.core_event_types()) & set(APP.event_types), "a type is both core and app"


def _committed(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.avsc").read_text())


def test_one_schema_per_event_type_and_no_strays() -> None:
    assert {p.stem for p in SCHEMAS.glob("*.avsc")} == set(EVENT_TYPES)
    for sub in SCHEMAS.iterdir():
        if sub.is_dir():  # older versions: schemas/v<N>/<Type>.avsc for a type that still exists
            assert sub.name[0] == "v" and sub.name[1:].isdigit(), sub
            for path in sub.glob("*.avsc"):
                assert path.stem in EVENT_TYPES, path
                assert int(sub.name[1:]) < EVENT_TYPES[path.stem].SCHEMA_VERSION, path


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_committed_schema_is_what_the_model_generates(name: str) -> None:
    """Adding a field to a model and not to its .avsc (or the reverse) fails here."""
    generated = schemas.event_schema(EVENT_TYPES[name])
    committed = _committed(name)
    assert codec.fingerprint(generated) == codec.fingerprint(committed), (
        f"schemas/{name}.avsc and pm.events.{name} disagree; run `pm schemas generate --core` "
        "(and keep the old file under schemas/v<N>/ with a SCHEMA_VERSION bump if old data exists)"
    )
    assert generated == committed  # defaults and docs too


# An independent walk (not the generator): field names, order, optionality and kinds.
_KINDS: dict[type, set[str]] = {
    str: {"string"},
    int: {"long", "int"},
    float: {"double", "float"},
    bool: {"boolean"},
    bytes: {"bytes"},
}


def _resolve(avro: Any, named: dict[str, Any]) -> Any:
    if isinstance(avro, str) and avro in named:
        return named[avro]
    if isinstance(avro, dict) and avro.get("type") == "record":
        named[f"{avro.get('namespace', '')}.{avro['name']}"] = avro
    return avro


def _check(annotation: Any, avro: Any, named: dict[str, Any], where: str) -> None:
    avro = _resolve(avro, named)
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        assert isinstance(avro, list) and "null" in avro and len(avro) == 2, (
            f"{where}: nullable needs a null union"
        )
        _check(inner[0], next(b for b in avro if b != "null"), named, where)
        return
    assert not isinstance(avro, list), f"{where}: union in schema, not optional in model"
    if origin is Literal:
        assert avro in ("string", {"type": "string"}) or (
            isinstance(avro, dict) and avro.get("type") == "enum"
        )
    elif origin is list:
        assert isinstance(avro, dict) and avro["type"] == "array", f"{where}: expected array"
        _check(get_args(annotation)[0], avro["items"], named, f"{where}[]")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        assert isinstance(avro, dict) and avro["type"] == "record", f"{where}: expected record"
        assert avro["name"] == annotation.__name__, where
        fields = avro["fields"]
        assert [f["name"] for f in fields] == list(annotation.model_fields), f"{where}: field names differ"
        for field, (name, info) in zip(fields, annotation.model_fields.items(), strict=True):
            assert ("default" in field) == (not info.is_required()), (
                f"{where}.{name}: default/required differ"
            )
            _check(info.annotation, field["type"], named, f"{where}.{name}")
    elif annotation is datetime:
        assert avro == {"type": "long", "logicalType": "timestamp-millis"}, (
            f"{where}: expected timestamp-millis"
        )
    else:
        assert avro in _KINDS[annotation], f"{where}: {avro!r} is not a {annotation.__name__}"


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_model_and_schema_fields_agree(name: str) -> None:
    cls: type[Event] = EVENT_TYPES[name]
    schema = _committed(name)
    assert schema["name"] == name
    fields = {f["name"]: f for f in schema["fields"]}
    assert list(fields) == list(Event.model_fields), "envelope fields differ"
    assert fields["schema_version"]["type"] == "int"
    assert fields["causation_id"] == {"name": "causation_id", "type": ["null", "string"], "default": None}
    _check(cls.model_fields["payload"].annotation, fields["payload"]["type"], {}, f"{name}.payload")


def test_the_walk_notices_a_field_added_to_one_side_only() -> None:
    """Guard for the guard: a schema missing a model field must fail the independent walk."""
    schema = _committed("EmailReceived")
    payload = schema["fields"][-1]["type"]
    payload["fields"] = [f for f in payload["fields"] if f["name"] != "labels"]
    with pytest.raises(AssertionError, match="field names differ"):
        _check(EVENT_TYPES["EmailReceived"].model_fields["payload"].annotation, payload, {}, "x")


# ---------------------------------------------------------------- backward compatibility


def _compatible(reader: Any, writer: Any, rnamed: dict[str, Any], wnamed: dict[str, Any], where: str) -> None:
    """Avro schema resolution rules (the subset our schemas use): can `reader` read `writer` data?"""
    reader, writer = _resolve(reader, rnamed), _resolve(writer, wnamed)
    if isinstance(writer, list):
        for branch in writer:  # every writer branch must resolve
            _compatible(reader, branch, rnamed, wnamed, where)
        return
    if isinstance(reader, list):
        for branch in reader:
            try:
                _compatible(branch, writer, rnamed, wnamed, where)
                return
            except AssertionError:
                continue
        raise AssertionError(f"{where}: no reader branch of {reader} matches {writer}")
    rtype = reader["type"] if isinstance(reader, dict) else reader
    wtype = writer["type"] if isinstance(writer, dict) else writer
    promotions = {
        ("long", "int"),
        ("double", "int"),
        ("double", "long"),
        ("double", "float"),
        ("float", "int"),
    }
    assert rtype == wtype or (rtype, wtype) in promotions, f"{where}: {wtype} cannot be read as {rtype}"
    if rtype == "record":
        assert reader["name"] == writer["name"], f"{where}: record renamed"
        wfields = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            if field["name"] in wfields:
                _compatible(
                    field["type"], wfields[field["name"]]["type"], rnamed, wnamed, f"{where}.{field['name']}"
                )
            else:
                assert "default" in field, f"{where}.{field['name']}: new field without a default"
    elif rtype == "array":
        _compatible(reader["items"], writer["items"], rnamed, wnamed, f"{where}[]")
    elif isinstance(reader, dict) and "logicalType" in reader:
        assert reader.get("logicalType") == writer.get("logicalType"), f"{where}: logical type changed"


def _kept_versions() -> list[Path]:
    return sorted(SCHEMAS.glob("v*/*.avsc"))


def test_evolution_example_exists() -> None:
    assert SCHEMAS / "v1" / "EmailReceived.avsc" in _kept_versions()


@pytest.mark.parametrize("old", _kept_versions(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_latest_schema_is_backward_compatible(old: Path) -> None:
    if codec.upcaster_for(old.stem, int(old.parent.name[1:])) is not None:
        pytest.skip("read through the bundled app's upcaster (tests/test_codec.py covers it)")
    _compatible(_committed(old.stem), json.loads(old.read_text()), {}, {}, old.stem)


def test_the_compatibility_check_catches_a_breaking_change() -> None:
    old = json.loads((SCHEMAS / "v1" / "EmailReceived.avsc").read_text())
    new = _committed("EmailReceived")
    labels = next(f for f in new["fields"][-1]["type"]["fields"] if f["name"] == "labels")
    del labels["default"]
    with pytest.raises(AssertionError, match="without a default"):
        _compatible(new, old, {}, {}, "EmailReceived")
    new = _committed("EmailReceived")
    new["fields"][-1]["type"]["fields"][2]["type"] = "long"  # sender: string -> long
    with pytest.raises(AssertionError, match="cannot be read"):
        _compatible(new, old, {}, {}, "EmailReceived")


def test_every_schema_parses_and_fingerprints_are_distinct() -> None:
    infos = codec.SchemaRegistry(SCHEMAS).all()  # the repo folder alone (tests may add app folders)
    assert len({i.fingerprint for i in infos}) == len(infos)
    assert {i.type_name for i in infos} == set(EVENT_TYPES)


def test_generator_check_mode_is_clean() -> None:
    assert schemas.stale(EVENT_TYPES.values(), SCHEMAS) == []
