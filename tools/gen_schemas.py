"""Generate `schemas/<Type>.avsc` from the pydantic models in `pm.events`.

The committed `.avsc` files are the wire contract (any language codes against
them); this script only saves typing when a model changes. `tests/test_schemas.py`
fails when a model and its committed schema disagree, so run

    .venv/bin/python tools/gen_schemas.py            # rewrite schemas/*.avsc
    .venv/bin/python tools/gen_schemas.py --check    # exit 1 if any file is stale

and, when a change is not just an added field with a default, keep the old
file under `schemas/v<N>/` so the evolution test proves old data still reads.

Mapping (pydantic -> Avro):
- str -> string; int -> long (offsets and cents can exceed 2^31); float -> double;
  bool -> boolean; bytes -> bytes; StrEnum -> string;
- `Timestamp` (UTC datetime) -> long with logicalType timestamp-millis;
- `Literal["a", "b"]` -> string, not an Avro enum: adding a symbol to an Avro
  enum breaks every reader that lacks it, while pydantic still validates the
  value on decode. The allowed values are listed in the field's `doc`;
- `X | None` -> union ["null", X] (the default's branch first, as Avro requires);
- `list[X]` -> array; nested models -> named records in namespace `pm.events`
  (defined at first use, referenced by full name afterwards);
- a field default becomes the Avro default, so readers of newer schemas fill
  fields that older writers did not have.

The envelope (event_id, correlation_id, causation_id, type, occurred_at,
schema_version, payload) is the same in every schema; `schema_version` is an Avro
int, the class's SCHEMA_VERSION.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pm.events import EVENT_TYPES, Event

__all__ = ["NAMESPACE", "event_schema", "all_schemas", "render", "main"]

NAMESPACE = "pm.events"
TIMESTAMP_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
_PRIMITIVES: dict[type, str] = {str: "string", int: "long", float: "double", bool: "boolean", bytes: "bytes"}


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
    doc = (model.__doc__ or "").strip().splitlines()
    if doc and model.__module__ == "pm.events":
        record["doc"] = doc[0]
    record["fields"] = [_field(name, info, named) for name, info in model.model_fields.items()]
    return record


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The Avro schema of one event type: the shared envelope around its typed payload."""
    named: set[str] = {f"{NAMESPACE}.{cls.__name__}"}
    payload = cls.model_fields["payload"].annotation
    if not (isinstance(payload, type) and issubclass(payload, BaseModel)):
        raise TypeError(f"{cls.__name__}.payload must be a model, got {payload!r}")
    step = getattr(cls, "STEP", None)
    topic = f"cmd.{step.value}" if step is not None else (cls.TOPIC or "none (journal only)")
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


def all_schemas() -> dict[str, dict[str, Any]]:
    """Type name -> schema, for every registered event type."""
    return {name: event_schema(cls) for name, cls in EVENT_TYPES.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "schemas")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed schema is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, schema in all_schemas().items():
        path = args.out / f"{name}.avsc"
        text = render(schema)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
