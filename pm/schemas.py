"""Avro schemas from the pydantic event models, and the backward-compatibility check of kept versions.

The `.avsc` files are the wire contract (any language codes against them); generating them from
the models only saves typing. `pm schemas generate` writes them, `pm schemas check` says which are
stale and whether the latest schema of each type still reads every older version kept beside it:

    <schema_dir>/<Type>.avsc         the latest schema of each type (what writers use today)
    <schema_dir>/v<N>/<Type>.avsc    older versions kept because data written with them exists

When a change is not just an added field with a default, copy the old file to `v<N>/` (N = the old
SCHEMA_VERSION) and bump the class's SCHEMA_VERSION; the check then proves old data still reads.

Mapping (pydantic -> Avro):
- str -> string; int -> long (offsets and cents can exceed 2^31); float -> double;
  bool -> boolean; bytes -> bytes; StrEnum -> string;
- `Timestamp` (UTC datetime) -> long with logicalType timestamp-millis;
- `Literal["a", "b"]` -> string, not an Avro enum: adding a symbol to an Avro enum breaks every
  reader that lacks it, while pydantic still validates the value on decode. The allowed values are
  listed in the field's `doc`;
- `X | None` -> union ["null", X] (the default's branch first, as Avro requires);
- `list[X]` -> array; nested models -> named records in namespace `pm.events` (defined at first
  use, referenced by full name afterwards; every app's types share the namespace, as they share
  the type registry `pm.events.EVENT_TYPES`);
- a field default becomes the Avro default, so readers of newer schemas fill fields that older
  writers did not have.

The envelope (event_id, correlation_id, causation_id, type, occurred_at, schema_version, payload)
is the same in every schema; `schema_version` is an Avro int, the class's SCHEMA_VERSION.

This module is pure: it imports no app. Which types go where is the caller's choice: the core
types (`core_event_types()`) into the core folder (`pm.codec.schema_dir()`), an app's
`App.event_types` into its `App.schema_dir`.
"""

from __future__ import annotations

import io
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pm.codec import upcaster_for
from pm.events import (
    ApprovalDecided,
    ApprovalReminder,
    ApprovalRequested,
    DlqRecord,
    Event,
    JournalEntry,
    OperatorCommand,
    StepFailed,
    TimerCancelled,
    TimerFired,
    TimerScheduled,
)

__all__ = [
    "NAMESPACE",
    "CORE_EVENT_TYPES",
    "core_event_types",
    "event_schema",
    "render",
    "generate",
    "stale",
    "kept_versions",
    "compatibility_problems",
]

NAMESPACE = "pm.events"
TIMESTAMP_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
_PRIMITIVES: dict[type, str] = {str: "string", int: "long", float: "double", bool: "boolean", bytes: "bytes"}
_VERSION_DIR = re.compile(r"^v(\d+)$")

# The rule for "core": the events the runtime itself produces or consumes whatever app it runs
# (step failures, timers, approvals, the journal, the DLQ). An explicit list, not derived from a
# module or topic, so moving or adding a class never silently moves its schema to another folder.
CORE_EVENT_TYPES: tuple[type[Event], ...] = (
    StepFailed,
    TimerScheduled,
    TimerCancelled,
    TimerFired,
    ApprovalRequested,
    ApprovalDecided,
    ApprovalReminder,
    OperatorCommand,
    JournalEntry,
    DlqRecord,
)


def core_event_types() -> tuple[type[Event], ...]:
    """The event types every app shares; their schemas live in the core folder (`pm.codec.schema_dir()`)."""
    return CORE_EVENT_TYPES


# ---------------------------------------------------------------- generation


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _avro_type(annotation: Any, named: set[str]) -> Any:
    annotation = _strip_annotated(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != len(get_args(annotation)) - 1 or len(members) != 1:
            raise TypeError(f"only `X | None` unions are supported, got {annotation!r}")
        return ["null", _avro_type(members[0], named)]
    if origin is Literal:
        values = get_args(annotation)
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"only string literals are supported, got {annotation!r}")
        return "string"
    if origin is list:
        (item,) = get_args(annotation)
        return {"type": "array", "items": _avro_type(item, named)}
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return _record(annotation, named)
        if issubclass(annotation, datetime):
            return dict(TIMESTAMP_MILLIS)
        if issubclass(annotation, Enum):
            return "string"
        for py, avro in _PRIMITIVES.items():
            if annotation is py:
                return avro
    raise TypeError(f"no Avro mapping for {annotation!r}")


def _field(name: str, info: FieldInfo, named: set[str]) -> dict[str, Any]:
    avro_type = _avro_type(info.annotation, named)
    field: dict[str, Any] = {"name": name, "type": avro_type}
    literal = _strip_annotated(info.annotation)
    if get_origin(literal) in (Union, types.UnionType):
        literal = next(a for a in get_args(literal) if a is not type(None))
    if get_origin(literal) is Literal:
        field["doc"] = "one of: " + ", ".join(get_args(literal))
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        if isinstance(avro_type, list) and default is not None:
            # Avro: a union's default must match its first branch.
            field["type"] = [avro_type[1], "null"]
        field["default"] = default
    return field


def _record(model: type[BaseModel], named: set[str]) -> Any:
    full = f"{NAMESPACE}.{model.__name__}"
    if full in named:
        return full
    named.add(full)
    record: dict[str, Any] = {"type": "record", "name": model.__name__, "namespace": NAMESPACE}
    # Only the model's own docstring (its first line): a subclass must not repeat its base's.
    doc = (model.__dict__.get("__doc__") or "").strip().splitlines()
    if doc:
        record["doc"] = doc[0]
    record["fields"] = [_field(name, info, named) for name, info in model.model_fields.items()]
    return record


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The Avro schema of one event type: the shared envelope around its typed payload."""
    if cls.__name__ != cls.TYPE:
        # The codec finds a type's schema by file name (= TYPE) and checks the record name against it.
        raise TypeError(f"{cls.__name__}.TYPE is {cls.TYPE!r}; an event type must be named like its class")
    named: set[str] = {f"{NAMESPACE}.{cls.__name__}"}
    payload = cls.model_fields["payload"].annotation
    if not (isinstance(payload, type) and issubclass(payload, BaseModel)):
        raise TypeError(f"{cls.__name__}.payload must be a model, got {payload!r}")
    step = getattr(cls, "STEP", None)
    # str(): a core Step (StrEnum) and an app's plain string step name both print as the name.
    topic = f"cmd.{step}" if step is not None else (cls.TOPIC or "none (journal only)")
    doc = f"{cls.TYPE} (schema version {cls.SCHEMA_VERSION}); logical topic {topic}."
    return {
        "type": "record",
        "name": cls.__name__,
        "namespace": NAMESPACE,
        "doc": doc,
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "correlation_id", "type": "string"},
            {"name": "causation_id", "type": ["null", "string"], "default": None},
            {"name": "type", "type": "string", "doc": f"always {cls.TYPE!r}"},
            {"name": "occurred_at", "type": dict(TIMESTAMP_MILLIS)},
            {"name": "schema_version", "type": "int"},
            {"name": "payload", "type": _record(payload, named)},
        ],
    }


def render(schema: Mapping[str, Any]) -> str:
    """The file text of a schema (stable: what `generate` writes and `stale` compares)."""
    return json.dumps(schema, indent=2) + "\n"


def _unique(event_types: Iterable[type[Event]]) -> list[type[Event]]:
    return list(dict.fromkeys(event_types))


def generate(event_types: Iterable[type[Event]], directory: Path) -> list[Path]:
    """Write `<directory>/<Type>.avsc` for each type; the files that changed. `v<N>/` is never touched."""
    changed: list[Path] = []
    for cls in _unique(event_types):
        path = directory / f"{cls.TYPE}.avsc"
        text = render(event_schema(cls))
        if path.is_file() and path.read_text() == text:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(path)
    return changed


def stale(event_types: Iterable[type[Event]], directory: Path) -> list[str]:
    """Problems, one per file: missing, or not what the model generates today."""
    problems: list[str] = []
    for cls in _unique(event_types):
        path = directory / f"{cls.TYPE}.avsc"
        if not path.is_file():
            problems.append(f"{path}: missing (run `pm schemas generate`)")
        elif path.read_text() != render(event_schema(cls)):
            problems.append(
                f"{path}: differs from {cls.__module__}.{cls.__name__} (run `pm schemas generate`; if old "
                "data exists and the change is more than a field with a default, first copy the old file "
                "to v<N>/, N its SCHEMA_VERSION, then bump SCHEMA_VERSION)"
            )
    return problems


# ---------------------------------------------------------------- backward compatibility


def kept_versions(directory: Path) -> list[Path]:
    """Every older version kept under `directory`: `v<N>/<Type>.avsc`, sorted."""
    if not directory.is_dir():
        return []
    return sorted(
        path
        for sub in directory.iterdir()
        if sub.is_dir() and _VERSION_DIR.match(sub.name)
        for path in sub.glob("*.avsc")
    )


def compatibility_problems(directory: Path) -> list[str]:
    """For every kept `v<N>/<Type>.avsc`: can the latest `<Type>.avsc` read data written with it?

    Two checks, both reported with the old file's path: Avro schema resolution rules over the two
    schemas (structural; names every incompatible field), and a round trip of a sample datum
    written with the old schema and read with the new one through fastavro (what the codec does).
    """
    problems: list[str] = []
    for old_path in kept_versions(directory):
        new_path = directory / old_path.name
        version = int(old_path.parent.name[1:])
        if upcaster_for(old_path.stem, version) is not None:
            continue  # read through a registered upcaster, not Avro resolution (its own tests cover it)
        if not new_path.is_file():
            problems.append(f"{old_path}: no latest {new_path.name} beside it to read it")
            continue
        try:
            old_named: dict[str, Any] = {}
            new_named: dict[str, Any] = {}
            old = parse_schema(json.loads(old_path.read_text()), named_schemas=old_named)
            new = parse_schema(json.loads(new_path.read_text()), named_schemas=new_named)
        except Exception as exc:  # JSON errors, OSError, fastavro's SchemaParseException (not a ValueError)
            problems.append(f"{old_path}: cannot parse it or {new_path.name}: {exc}")
            continue
        reasons = _Resolution(new_named, old_named).check(new, old, "")
        problems += [f"{old_path}: the latest {new_path.name} cannot read it: {r}" for r in reasons]
        if not reasons:  # a structural failure already says why; the round trip would only repeat it
            failure = _round_trip(old, new, old_named)
            if failure:
                problems.append(
                    f"{old_path}: the latest {new_path.name} cannot read it: round trip, {failure}"
                )
    return problems


# Writer type -> reader types that read it (Avro spec, "Schema Resolution").
_PROMOTIONS: dict[str, set[str]] = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NAMED = {"record", "enum", "fixed", "error"}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Resolution:
    """Avro schema resolution over fastavro-parsed schemas (full names, references as strings)."""

    def __init__(self, reader_named: Mapping[str, Any], writer_named: Mapping[str, Any]) -> None:
        self.reader_named = reader_named
        self.writer_named = writer_named
        self.in_progress: set[tuple[str, str]] = set()  # record pairs being checked (recursive types)

    def _deref(self, schema: Any, named: Mapping[str, Any]) -> Any:
        if isinstance(schema, str) and schema in named:
            return named[schema]
        if isinstance(schema, dict) and schema.get("type") not in _NAMED | {"array", "map"}:
            # {"type": "long", "logicalType": ...} stays; {"type": X} is just X.
            return schema if "logicalType" in schema else self._deref(schema["type"], named)
        return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        return schema if isinstance(schema, str) else str(schema["type"])

    @classmethod
    def _describe(cls, schema: Any) -> str:
        if isinstance(schema, list):
            return "[" + ", ".join(cls._describe(b) for b in schema) + "]"
        if isinstance(schema, dict):
            if "name" in schema:
                return f"{schema['type']} {_short(schema['name'])}"
            if "logicalType" in schema:
                return f"{schema['type']} ({schema['logicalType']})"
            return str(schema["type"])
        return _short(schema)

    def check(self, reader: Any, writer: Any, where: str) -> list[str]:
        """Why `reader` cannot read data written with `writer` (empty: it can)."""
        reader = self._deref(reader, self.reader_named)
        writer = self._deref(writer, self.writer_named)
        at = where or "the record"
        if isinstance(writer, list):  # every branch a writer may have used must resolve
            return [p for branch in writer for p in self.check(reader, branch, where)]
        if isinstance(reader, list):  # the first reader branch that matches is used
            if any(not self.check(branch, writer, where) for branch in reader):
                return []
            return [f"{at}: {self._describe(writer)} matches no branch of {self._describe(reader)}"]
        rkind, wkind = self._kind(reader), self._kind(writer)
        if rkind != wkind and rkind not in _PROMOTIONS.get(wkind, set()):
            return [f"{at}: {self._describe(writer)} cannot be read as {self._describe(reader)}"]
        if rkind in _NAMED and _short(reader["name"]) != _short(writer["name"]):
            aliases = {_short(a) for a in reader.get("aliases", ())}
            if _short(writer["name"]) not in aliases:
                return [f"{at}: {rkind} {_short(writer['name'])} renamed to {_short(reader['name'])}"]
        if rkind in ("record", "error"):
            return self._record(reader, writer, where)
        if rkind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return [f"{at}: enum symbols {missing} unknown to the reader (and no enum default)"]
        elif rkind == "fixed" and reader["size"] != writer["size"]:
            return [f"{at}: fixed size {writer['size']} cannot be read as {reader['size']}"]
        elif rkind == "array":
            return self.check(reader["items"], writer["items"], f"{where}[]")
        elif rkind == "map":
            return self.check(reader["values"], writer["values"], f"{where}{{}}")
        elif isinstance(reader, dict) or isinstance(writer, dict):
            # Same base type, other meaning (timestamp-millis vs micros, or a plain long): not data-safe.
            rlogical = reader.get("logicalType") if isinstance(reader, dict) else None
            wlogical = writer.get("logicalType") if isinstance(writer, dict) else None
            if rlogical != wlogical:
                return [f"{at}: {self._describe(writer)} cannot be read as {self._describe(reader)}"]
        return []

    def _record(self, reader: Mapping[str, Any], writer: Mapping[str, Any], where: str) -> list[str]:
        pair = (reader["name"], writer["name"])
        if pair in self.in_progress:
            return []  # a recursive reference: its fields are being checked further up
        self.in_progress.add(pair)
        try:
            written = {f["name"]: f for f in writer["fields"]}
            problems: list[str] = []
            for field in reader["fields"]:
                path = f"{where}.{field['name']}" if where else field["name"]
                names = [field["name"], *field.get("aliases", ())]
                source = next((written[n] for n in names if n in written), None)
                if source is not None:
                    problems += self.check(field["type"], source["type"], path)
                elif "default" not in field:
                    problems.append(f"{path}: field added without a default")
            return problems  # writer fields the reader lacks are skipped: removing a field is fine
        finally:
            self.in_progress.discard(pair)


_SAMPLE_DEPTH = 4  # below this, optional branches are null and arrays empty (recursive types end)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_LOGICAL_SAMPLES: dict[str, Any] = {
    "timestamp-millis": _EPOCH,
    "timestamp-micros": _EPOCH,
    "local-timestamp-millis": _EPOCH.replace(tzinfo=None),
    "local-timestamp-micros": _EPOCH.replace(tzinfo=None),
    "date": date(2000, 1, 1),
    "time-millis": time(0),
    "time-micros": time(0),
    "uuid": "00000000-0000-4000-8000-000000000000",
    "decimal": Decimal(0),
}
_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": False,
    "int": 0,
    "long": 0,
    "float": 0.0,
    "double": 0.0,
    "string": "",
    "bytes": b"",
}


def _sample(schema: Any, named: Mapping[str, Any], sparse: bool, depth: int = 0) -> Any:
    """A minimal datum of `schema`. Full: first non-null union branches and one-item arrays and maps,
    so nested types are exercised; sparse: null wherever a union allows it, empty arrays and maps."""
    if isinstance(schema, str):
        if schema in named:
            return _sample(named[schema], named, sparse, depth)
        return _PRIMITIVE_SAMPLES[schema]
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if not branches or ("null" in schema and (sparse or depth >= _SAMPLE_DEPTH)):
            return None
        return _sample(branches[0], named, sparse, depth + 1)
    kind = schema["type"]
    if schema.get("logicalType") in _LOGICAL_SAMPLES:
        return _LOGICAL_SAMPLES[schema["logicalType"]]
    if kind in ("record", "error"):
        return {f["name"]: _field_sample(f, named, sparse, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return bytes(schema["size"])
    many = not sparse and depth < _SAMPLE_DEPTH
    if kind == "array":
        return [_sample(schema["items"], named, sparse, depth + 1)] if many else []
    if kind == "map":
        return {"k": _sample(schema["values"], named, sparse, depth + 1)} if many else {}
    return _sample(kind, named, sparse, depth)


def _field_sample(field: Mapping[str, Any], named: Mapping[str, Any], sparse: bool, depth: int) -> Any:
    kind = field["type"]
    if "default" in field and isinstance(kind, str) and kind in _PRIMITIVE_SAMPLES:
        # The value a producer leaving the field unset writes; Avro JSON spells bytes as latin-1 text.
        default = field["default"]
        return default.encode("latin-1") if kind == "bytes" and isinstance(default, str) else default
    return _sample(kind, named, sparse, depth)


def _round_trip(old: Any, new: Any, old_named: Mapping[str, Any]) -> str | None:
    """Write samples with the old schema, read them with the new one; why that failed, or None."""
    for sparse in (False, True):
        try:
            body = io.BytesIO()
            schemaless_writer(body, old, _sample(old, old_named, sparse))
            data = body.getvalue()
            read = io.BytesIO(data)
            schemaless_reader(read, old, new)
        except Exception as exc:  # fastavro raises many kinds (SchemaResolutionError, ValueError, ...)
            return f"{'sparse' if sparse else 'full'} sample: {type(exc).__name__}: {exc}"
        if read.tell() != len(data):
            return f"{'sparse' if sparse else 'full'} sample: {len(data) - read.tell()} bytes left unread"
    return None
