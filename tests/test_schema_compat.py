"""`pm.schemas`: generation into any folder, the backward-compatibility check, and the codec over many folders.

`test_repo_kept_versions_are_readable_by_the_latest` is the CI backward-compatibility check: every
`schemas/v<N>/<Type>.avsc` must be readable by today's `schemas/<Type>.avsc`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from customer_email.app import APP
from pm import codec, schemas
from pm.app import App
from pm.cli import main
from pm.codec import CodecError
from pm.events import EVENT_TYPES, Event, Model

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


# ---------------------------------------------------------------- a throwaway event type


class SchemaCompatProbePayload(Model):
    """A payload only this test module uses."""

    name: str
    count: int = 0
    kind: Literal["a", "b"] = "a"
    tags: list[str] = Field(default_factory=list)


class SchemaCompatProbe(Event):
    TYPE = "SchemaCompatProbe"
    payload: SchemaCompatProbePayload


@pytest.fixture(scope="module", autouse=True)
def _probe_registered() -> Iterator[None]:
    """Registered once for this module and removed after: other tests compare `EVENT_TYPES` to the
    repo's schemas, and pytest imports every test module before running any, so a module-level
    `@event_type` would leak the probe into them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(EVENT_TYPES, SchemaCompatProbe.TYPE, SchemaCompatProbe)
        yield


def _probe() -> SchemaCompatProbe:
    return SchemaCompatProbe(
        event_id="e-1",
        correlation_id="c-1",
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        payload=SchemaCompatProbePayload(name="probe", count=3, kind="b", tags=["x"]),
    )


# ---------------------------------------------------------------- the repo


def test_repo_kept_versions_are_readable_by_the_latest() -> None:
    assert schemas.kept_versions(SCHEMAS), "the evolution example schemas/v1/ is gone"
    assert schemas.compatibility_problems(SCHEMAS) == []


def test_repo_schemas_are_current() -> None:
    assert schemas.stale(schemas.core_event_types(), SCHEMAS) == []
    assert schemas.stale(APP.event_types, SCHEMAS) == []


# ---------------------------------------------------------------- compatibility_problems, table


def _record(fields: list[dict[str, Any]], name: str = "Thing") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "test", "fields": fields}


def _write(directory: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    (directory / "v1").mkdir(parents=True)
    (directory / "v1" / f"{old['name']}.avsc").write_text(json.dumps(old))
    (directory / f"{new['name']}.avsc").write_text(json.dumps(new))


ID = {"name": "id", "type": "string"}
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]] = {
    # name: (old fields, new fields, None if compatible else a fragment of the reason)
    "unchanged": ([ID], [ID], None),
    "added field with default": ([ID], [ID, {"name": "n", "type": "long", "default": 0}], None),
    "added optional field": ([ID], [ID, {"name": "n", "type": ["null", "long"], "default": None}], None),
    "added field without default": ([ID], [ID, {"name": "n", "type": "long"}], "n: field added without"),
    "removed field": ([ID, {"name": "n", "type": "long"}], [ID], None),
    "int -> long": ([{"name": "n", "type": "int"}], [{"name": "n", "type": "long"}], None),
    "int -> double": ([{"name": "n", "type": "int"}], [{"name": "n", "type": "double"}], None),
    "long -> int": (
        [{"name": "n", "type": "long"}],
        [{"name": "n", "type": "int"}],
        "n: long cannot be read as int",
    ),
    "string -> int": (
        [{"name": "n", "type": "string"}],
        [{"name": "n", "type": "int"}],
        "cannot be read as int",
    ),
    "string -> bytes": ([{"name": "n", "type": "string"}], [{"name": "n", "type": "bytes"}], None),
    "union widening": (
        [{"name": "n", "type": ["null", "string"]}],
        [{"name": "n", "type": ["null", "string", "long"]}],
        None,
    ),
    "plain -> optional": (
        [{"name": "n", "type": "string"}],
        [{"name": "n", "type": ["null", "string"]}],
        None,
    ),
    "optional -> plain": (
        [{"name": "n", "type": ["null", "string"]}],
        [{"name": "n", "type": "string"}],
        "n: null cannot be read as string",
    ),
    "literal strings gain a value (no Avro enum)": (
        [{"name": "kind", "type": "string", "doc": "one of: a, b"}],
        [{"name": "kind", "type": "string", "doc": "one of: a, b, c"}],
        None,
    ),
    "array items int -> long": (
        [{"name": "xs", "type": {"type": "array", "items": "int"}}],
        [{"name": "xs", "type": {"type": "array", "items": "long"}}],
        None,
    ),
    "array items long -> int": (
        [{"name": "xs", "type": {"type": "array", "items": "long"}}],
        [{"name": "xs", "type": {"type": "array", "items": "int"}}],
        "xs[]: long cannot be read as int",
    ),
    "map values string -> long": (
        [{"name": "m", "type": {"type": "map", "values": "string"}}],
        [{"name": "m", "type": {"type": "map", "values": "long"}}],
        "m{}: string cannot be read as long",
    ),
    "nested record gains a field with default": (
        [{"name": "p", "type": _record([ID], "Part")}],
        [{"name": "p", "type": _record([ID, {"name": "n", "type": "long", "default": 1}], "Part")}],
        None,
    ),
    "nested record gains a field without default": (
        [{"name": "p", "type": _record([ID], "Part")}],
        [{"name": "p", "type": _record([ID, {"name": "n", "type": "long"}], "Part")}],
        "p.n: field added without a default",
    ),
    "nested record renamed": (
        [{"name": "p", "type": _record([ID], "Part")}],
        [{"name": "p", "type": _record([ID], "Piece")}],
        "renamed",
    ),
    "named type referenced by name": (
        [{"name": "p", "type": _record([ID], "Part")}, {"name": "q", "type": ["null", "test.Part"]}],
        [{"name": "p", "type": _record([ID], "Part")}, {"name": "q", "type": ["null", "test.Part"]}],
        None,
    ),
    "timestamp-millis -> plain long": (
        [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
        [{"name": "t", "type": "long"}],
        "cannot be read as long",
    ),
    "enum loses a symbol": (
        [{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}],
        [{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}],
        "enum symbols ['B']",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compatibility_table(case: str, tmp_path: Path) -> None:
    old_fields, new_fields, reason = CASES[case]
    _write(tmp_path, _record(old_fields), _record(new_fields))
    problems = schemas.compatibility_problems(tmp_path)
    if reason is None:
        assert problems == []
    else:
        assert problems, f"{case}: expected a problem"
        assert all(p.startswith(f"{tmp_path / 'v1' / 'Thing.avsc'}: ") for p in problems), problems
        assert any(reason in p for p in problems), problems


def test_a_kept_version_without_a_latest_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "Gone.avsc").write_text(json.dumps(_record([ID], "Gone")))
    (problem,) = schemas.compatibility_problems(tmp_path)
    assert "no latest Gone.avsc" in problem


@pytest.mark.parametrize("case", ["long -> int", "added field without default", "optional -> plain"])
def test_the_round_trip_alone_catches_what_the_rules_catch(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second net: with the structural rules switched off, fastavro's own read still refuses."""
    monkeypatch.setattr(schemas._Resolution, "check", lambda self, reader, writer, where: [])
    old_fields, new_fields, _ = CASES[case]
    _write(tmp_path, _record(old_fields), _record(new_fields))
    (problem,) = schemas.compatibility_problems(tmp_path)
    assert "round trip" in problem


def test_a_schema_that_does_not_parse_is_a_problem(tmp_path: Path) -> None:
    bad = {"name": "n", "type": {"type": "array", "items": "string"}, "default": "oops"}
    _write(tmp_path, _record([ID]), _record([ID, bad]))
    (problem,) = schemas.compatibility_problems(tmp_path)
    assert "cannot parse" in problem and "oops" in problem


def test_folders_without_kept_versions_have_no_problems(tmp_path: Path) -> None:
    assert schemas.compatibility_problems(tmp_path / "missing") == []
    assert schemas.compatibility_problems(tmp_path) == []


# ---------------------------------------------------------------- generate / stale


def test_generate_and_stale_on_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "app-schemas"
    path = target / "SchemaCompatProbe.avsc"
    assert schemas.stale([SchemaCompatProbe], target) == [f"{path}: missing (run `pm schemas generate`)"]
    assert schemas.generate([SchemaCompatProbe], target) == [path]
    assert schemas.generate([SchemaCompatProbe, SchemaCompatProbe], target) == []  # unchanged: not rewritten
    assert schemas.stale([SchemaCompatProbe], target) == []
    written = json.loads(path.read_text())
    assert written == schemas.event_schema(SchemaCompatProbe)
    assert written["fields"][-1]["type"]["doc"] == "A payload only this test module uses."
    kind = next(f for f in written["fields"][-1]["type"]["fields"] if f["name"] == "kind")
    assert kind == {"name": "kind", "type": "string", "doc": "one of: a, b", "default": "a"}

    old = target / "v1" / "SchemaCompatProbe.avsc"
    old.parent.mkdir()
    old.write_text("kept as is")
    path.write_text(path.read_text().replace('"count"', '"total"'))
    (problem,) = schemas.stale([SchemaCompatProbe], target)
    assert problem.startswith(f"{path}: differs from ")
    assert schemas.generate([SchemaCompatProbe], target) == [path]
    assert old.read_text() == "kept as is"  # generate never touches v<N>/
    assert schemas.stale([SchemaCompatProbe], target) == []


def test_an_event_type_must_be_named_like_its_class() -> None:
    class Misnamed(Event):
        TYPE = "SomethingElse"
        payload: SchemaCompatProbePayload

    with pytest.raises(TypeError, match="named like its class"):
        schemas.event_schema(Misnamed)


def test_core_types_are_the_shared_ones() -> None:
    names = {cls.TYPE for cls in schemas.core_event_types()}
    assert "StepFailed" in names and "JournalEntry" in names and "DlqRecord" in names
    assert not names & {"EmailReceived", "ClassifyEmail", "EmailSent"}


# ---------------------------------------------------------------- the codec over several folders


@pytest.fixture
def no_added_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The codec's added folders back to none, and restored after the test (the cache keys on them)."""
    monkeypatch.setattr(codec, "_added_dirs", ())


@pytest.mark.usefixtures("no_added_dirs")
def test_an_added_folder_lets_its_types_round_trip(tmp_path: Path) -> None:
    event = _probe()
    with pytest.raises(CodecError, match="no schema for event type 'SchemaCompatProbe'"):
        codec.encode(event)
    schemas.generate([SchemaCompatProbe], tmp_path)
    codec.add_schema_dir(tmp_path)
    codec.add_schema_dir(tmp_path / ".")  # idempotent
    assert codec.schema_dirs() == (codec.schema_dir().resolve(), tmp_path.resolve())
    data = codec.encode(event)
    assert codec.type_of(data) == "SchemaCompatProbe"
    assert codec.decode(data) == event
    assert codec.decode(codec.encode(_email_event())).type == "EmailReceived"  # the core dir still read


@pytest.mark.usefixtures("no_added_dirs")
def test_an_added_folder_is_read_lazily_and_a_missing_one_is_named(tmp_path: Path) -> None:
    codec.add_schema_dir(tmp_path / "not-yet")  # an app whose schemas are not generated yet still loads
    with pytest.raises(CodecError, match="not-yet not found"):
        codec.registry()


@pytest.mark.usefixtures("no_added_dirs")
def test_a_type_with_two_different_latest_schemas_is_refused(tmp_path: Path) -> None:
    same, different = tmp_path / "same", tmp_path / "different"
    schema = json.loads((SCHEMAS / "EmailReceived.avsc").read_text())
    same.mkdir()
    (same / "EmailReceived.avsc").write_text(json.dumps(schema))  # the same schema twice: fine
    codec.add_schema_dir(same)
    assert codec.schema_for("EmailReceived").path == SCHEMAS.resolve() / "EmailReceived.avsc"
    different.mkdir()
    schema["doc"] = "another one"  # even a doc: which file is the contract would be ambiguous
    (different / "EmailReceived.avsc").write_text(json.dumps(schema))
    codec.add_schema_dir(different)  # adding a folder invalidates the cached registry
    with pytest.raises(CodecError, match="different latest schemas") as caught:
        codec.registry()
    message = str(caught.value)
    assert str(SCHEMAS.resolve() / "EmailReceived.avsc") in message
    assert str(different.resolve() / "EmailReceived.avsc") in message


def _email_event() -> Event:
    from customer_email.events import EmailReceived, EmailReceivedPayload

    return EmailReceived(
        event_id="e-2",
        correlation_id="c-2",
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
        payload=EmailReceivedPayload(
            message_id="m-2",
            sender="jane@example.com",
            recipient="support@example.com",
            subject="hi",
            body="hello",
            received_at=datetime(2026, 1, 2, tzinfo=UTC),
        ),
    )


# ---------------------------------------------------------------- the CLI


def test_cli_check_on_the_bundled_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "check"]) == 0
    out = capsys.readouterr().out
    kept = len(schemas.kept_versions(SCHEMAS))
    assert out.strip() == f"ok: 21 schemas up to date, {kept} older versions readable"


def _app_in(directory: Path | None) -> App:
    return App(APP.name, APP.processes, APP.steps, APP.start_topics, events=APP.events, schema_dir=directory)


def test_cli_generate_then_check_an_app_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pm.commands.schemas as command

    app_dir, core_dir = tmp_path / "app", tmp_path / "core"
    monkeypatch.setattr(command, "load_app", lambda target=None: _app_in(app_dir))
    monkeypatch.setenv("PM_SCHEMA_DIR", str(core_dir))
    assert main(["schemas", "check"]) == 1
    out = capsys.readouterr().out
    assert f"stale: {app_dir / 'EmailReceived.avsc'}: missing" in out
    assert f"stale: {core_dir / 'JournalEntry.avsc'}: missing" in out

    assert main(["schemas", "generate"]) == 0
    assert capsys.readouterr().out.endswith("11 written, 0 up to date\n")
    assert main(["schemas", "generate", "--core"]) == 0
    assert capsys.readouterr().out.endswith("10 written, 11 up to date\n")
    assert sorted(p.name for p in core_dir.iterdir()) == sorted(
        f"{cls.TYPE}.avsc" for cls in schemas.core_event_types()
    )
    assert main(["schemas", "check"]) == 0
    assert capsys.readouterr().out == "ok: 21 schemas up to date, 0 older versions readable\n"

    # An old version the latest cannot read fails the check, naming the file.
    old = json.loads((app_dir / "EmailReceived.avsc").read_text())
    next(f for f in old["fields"][-1]["type"]["fields"] if f["name"] == "sender")["type"] = "long"
    (app_dir / "v1").mkdir()
    (app_dir / "v1" / "EmailReceived.avsc").write_text(json.dumps(old))
    assert main(["schemas", "check"]) == 1
    out = capsys.readouterr().out
    assert f"incompatible: {app_dir / 'v1' / 'EmailReceived.avsc'}: " in out
    assert "payload.sender: long cannot be read as string" in out


def test_cli_refuses_an_app_without_a_schema_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pm.commands.schemas as command

    monkeypatch.setattr(command, "load_app", lambda target=None: _app_in(None))
    assert main(["schemas", "check"]) == 2
    assert "has no schema_dir" in capsys.readouterr().err
