"""The wire format: Avro single-object encoding of every `Event`, with the schemas in `schemas/`.

A record value is `C3 01` (marker), the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary
body (fastavro `schemaless_writer`). A reader looks the fingerprint up among every
schema version it knows (the latest `schemas/<Type>.avsc` and the older ones kept
under `schemas/v<N>/<Type>.avsc`) and resolves the body from that writer schema to
the latest reader schema of the type, so old records read with today's defaults.
Anything that cannot be decoded into a valid event raises `CodecError`, which the
PM and consumers route to `pm.dlq`.

Schemas are parsed once per process (module-level cache). The registry spans the
core folder (`schema_dir()`: `PM_SCHEMA_DIR`, which the Docker image sets, else the
repository's `schemas/`) plus every folder passed to `add_schema_dir`: `pm.app.load_app`
registers the loaded app's `App.schema_dir` there, so an app's own event types encode
and decode beside the core ones. A type whose latest schema differs between two folders
is a `CodecError` naming both files. The added folders are one module-level tuple, part
of the cache key: restoring it (e.g. a test's monkeypatch) restores the registry.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from pydantic import ValidationError

from pm.avro_scan import ScanError, Scanner, compile_scanner
from pm.avro_write import WriteMismatch, Writer, compile_writer
from pm.errors import PmError
from pm.events import EVENT_TYPES, Event

__all__ = [
    "MARKER",
    "HEADER_SIZE",
    "CodecError",
    "register_upcaster",
    "upcaster_for",
    "SchemaInfo",
    "SchemaRegistry",
    "schema_dir",
    "add_schema_dir",
    "schema_dirs",
    "registry",
    "fingerprint",
    "schema_for",
    "encode",
    "encode_record",
    "decode",
    "read_fields",
    "read_paths",
    "type_of",
]

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8
_VERSION_DIR = re.compile(r"^v(\d+)$")


class CodecError(PmError, ValueError):
    """Bytes that are not a valid event of a known schema (route them to the DLQ), or an unencodable event."""


@dataclass(frozen=True)
class SchemaInfo:
    """One version of one event type's schema."""

    type_name: str
    version: int
    path: Path
    schema: Mapping[str, Any]  # the .avsc as written
    parsed: Any  # fastavro's parsed form (what the reader and writer take)
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the canonical form
    header: bytes  # MARKER + fingerprint

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


# Schema folders registered beside the core one, in registration order (the one piece of global state).
_added_dirs: tuple[Path, ...] = ()
# (event type, writer schema version) -> turns the payload as that version wrote it into today's payload.
# For changes Avro resolution cannot express (a payload that changed shape); the app that owns the
# meaning registers it (`register_upcaster`) when it is loaded.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_upcasters: dict[tuple[str, int], Upcaster] = {}


def schema_dir() -> Path:
    """The core folder: `PM_SCHEMA_DIR`, else `schemas/` at the repository root (beside the package)."""
    named = os.environ.get("PM_SCHEMA_DIR")
    return Path(named) if named else Path(__file__).resolve().parent.parent / "schemas"


def register_upcaster(type_name: str, versions: Iterable[int], upcast: Upcaster) -> None:
    """Read payloads written with these older schema versions of `type_name` through `upcast`."""
    for version in versions:
        _upcasters[(type_name, int(version))] = upcast


def upcaster_for(type_name: str, version: int) -> Upcaster | None:
    return _upcasters.get((type_name, version))


def add_schema_dir(path: Path) -> None:
    """Also read the schemas in `path` (an app's folder). Idempotent; the folder is read lazily, at the
    next `registry()`, so an app whose folder `pm schemas generate` has yet to write still loads."""
    global _added_dirs
    path = Path(path).resolve()
    if path not in _added_dirs:
        _added_dirs = (*_added_dirs, path)
        _registry_for.cache_clear()


def _unique_dirs(directories: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(Path(d).resolve() for d in directories))


def schema_dirs() -> tuple[Path, ...]:
    """Every folder the registry reads: the core one, then the added ones (no duplicates)."""
    return _unique_dirs((schema_dir(), *_added_dirs))


def fingerprint(schema: Mapping[str, Any] | str) -> bytes:
    """The 8 bytes of the single-object header: CRC-64-AVRO of the Parsing Canonical Form, little-endian."""
    canonical = to_parsing_canonical_form(json.loads(schema) if isinstance(schema, str) else dict(schema))
    return bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))


def _load(path: Path, type_name: str, version: int) -> SchemaInfo:
    try:
        schema = json.loads(path.read_text())
        parsed = parse_schema(schema, named_schemas={})
    except (OSError, ValueError, TypeError) as exc:
        raise CodecError(f"schema {path}: cannot load: {exc}") from exc
    if schema.get("name") != type_name:
        raise CodecError(f"schema {path}: record name {schema.get('name')!r} does not match the file name")
    fp = fingerprint(schema)
    return SchemaInfo(type_name, version, path, schema, parsed, fp, MARKER + fp)


class SchemaRegistry:
    """Every schema version under the core directory and `more` directories: the latest per type, and
    all by fingerprint."""

    def __init__(self, directory: Path, more: Iterable[Path] = ()) -> None:
        self.directory = directory  # the core folder
        self.directories = _unique_dirs((directory, *more))
        self.latest: dict[str, SchemaInfo] = {}
        self.by_fingerprint: dict[bytes, SchemaInfo] = {}
        # (record header, paths) -> (type name, its Scanner or None): `read_paths`, filled as it goes.
        self.scanners: dict[tuple[bytes, tuple[str, ...]], tuple[str, Scanner | None]] = {}
        # latest schema's header -> its compiled Writer or None (`encode`), filled as it goes.
        self.writers: dict[bytes, Writer | None] = {}
        for folder in self.directories:
            if not folder.is_dir():
                hint = "set PM_SCHEMA_DIR" if folder == self.directories[0] else "run `pm schemas generate`"
                raise CodecError(f"schema directory {folder} not found ({hint})")
        # Every folder's latest schemas first: an old version equal to a latest one elsewhere yields to it.
        for folder in self.directories:
            for path in sorted(folder.glob("*.avsc")):
                cls = EVENT_TYPES.get(path.stem)
                version = cls.SCHEMA_VERSION if cls is not None else 0
                self._add(_load(path, path.stem, version), latest=True)
        for folder in self.directories:
            for sub in sorted(folder.iterdir()):
                match = _VERSION_DIR.match(sub.name)
                if sub.is_dir() and match:
                    for path in sorted(sub.glob("*.avsc")):
                        self._add(_load(path, path.stem, int(match.group(1))), latest=False)

    @property
    def where(self) -> str:
        """The folders read, for messages."""
        return ", ".join(str(d) for d in self.directories)

    def _add(self, info: SchemaInfo, latest: bool) -> None:
        known = self.by_fingerprint.get(info.fingerprint)
        if known is not None and known.type_name != info.type_name:
            raise CodecError(f"schemas {known.path} and {info.path} have the same fingerprint")
        if latest:
            other = self.latest.get(info.type_name)
            if other is not None:
                # Two folders define the type: fine only if they agree to the last doc and default.
                if other.schema != info.schema:
                    raise CodecError(
                        f"event type {info.type_name!r} has different latest schemas in {other.path} "
                        f"and {info.path}; keep one"
                    )
                return
            self.latest[info.type_name] = info
            self.by_fingerprint[info.fingerprint] = info
        else:
            # An old version identical to the latest keeps the latest's entry (no resolution needed).
            self.by_fingerprint.setdefault(info.fingerprint, info)

    def versions(self, type_name: str) -> list[SchemaInfo]:
        """Every known version of a type, oldest first (the latest last)."""
        found = {info.path: info for info in self.by_fingerprint.values() if info.type_name == type_name}
        return sorted(found.values(), key=lambda i: (i.version, i is self.latest.get(type_name)))

    def all(self) -> list[SchemaInfo]:
        return sorted(self.by_fingerprint.values(), key=lambda i: (i.type_name, i.version))


@lru_cache(maxsize=4)
def _registry_for(named_dir: str | None, added: tuple[Path, ...]) -> SchemaRegistry:
    return SchemaRegistry(Path(named_dir) if named_dir else schema_dir(), added)


# `os.environ.get` of an unset variable raises and catches a KeyError inside (~2.5 us): `registry()` runs
# several times per event, so it reads the environment's own dict (bytes keys on POSIX) when there is one.
_ENVIRON_DATA: Mapping[Any, Any] | None = getattr(os.environ, "_data", None)
_SCHEMA_DIR_KEY = os.environ.encodekey("PM_SCHEMA_DIR") if _ENVIRON_DATA is not None else None


def _schema_dir_setting() -> str | None:
    if _ENVIRON_DATA is None:
        return os.environ.get("PM_SCHEMA_DIR")
    raw = _ENVIRON_DATA.get(_SCHEMA_DIR_KEY)
    return None if raw is None else os.environ.decodevalue(raw)


def registry() -> SchemaRegistry:
    """The schemas of `schema_dirs()`, loaded and parsed once (cached per PM_SCHEMA_DIR value and added dirs)."""
    return _registry_for(_schema_dir_setting(), _added_dirs)


def schema_for(type_name: str, known: SchemaRegistry | None = None) -> SchemaInfo:
    """The latest schema of an event type (in `known`, else `registry()`)."""
    known = known or registry()
    info = known.latest.get(type_name)
    if info is None:
        raise CodecError(
            f"no schema for event type {type_name!r} in {known.where} (is its app's schema_dir loaded "
            "and generated? `pm schemas generate`)"
        )
    return info


def encode_record(info: SchemaInfo, record: Mapping[str, Any]) -> bytes:
    """Single-object encode a plain record with a given writer schema (tests, tools, old versions)."""
    out = io.BytesIO()
    out.write(info.header)
    try:
        schemaless_writer(out, info.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CodecError(f"cannot encode {info.type_name} with {info.path.name}: {exc}") from exc
    return out.getvalue()


def encode(event: Event) -> bytes:
    """The record value for an event: marker, fingerprint of its type's latest schema, Avro body.

    The body is written from the event's attributes by the schema's compiled `pm.avro_write.Writer`
    (fastavro's bytes, without a dict per model); an event it does not take as is (a value of an
    unexpected type) goes through `model_dump` and fastavro, which name the problem.
    """
    known = registry()
    info = schema_for(type(event).TYPE, known)
    try:
        writer = known.writers[info.header]
    except KeyError:
        writer = known.writers[info.header] = compile_writer(info.parsed)
    if writer is not None:
        try:
            return info.header + writer.write(event)
        except WriteMismatch:
            pass
    return encode_record(info, event.model_dump(mode="python"))


def _writer(data: bytes | bytearray | memoryview, known: SchemaRegistry | None = None) -> SchemaInfo:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE or bytes(data[:2]) != MARKER:
        head = bytes(data[:HEADER_SIZE]).hex(" ")
        raise CodecError(f"not an Avro single-object encoded event (expected marker c3 01, got {head!r})")
    fp = bytes(data[2:HEADER_SIZE])
    known = known or registry()
    info = known.by_fingerprint.get(fp)
    if info is None:
        raise CodecError(f"unknown schema fingerprint {fp.hex()} (no such schema version in {known.where})")
    return info


def type_of(data: bytes | bytearray | memoryview) -> str:
    """The event type named by the header, without decoding the body."""
    return _writer(data).type_name


def read_fields(data: bytes | bytearray | memoryview) -> tuple[str, dict[str, Any]]:
    """The event type and its fields as plain Avro data (read with the latest schema), not validated.

    For hot paths that need a few fields of a trusted record (a rebuild reading the PM's own
    journal); everything else uses `decode`.
    """
    known = registry()
    writer = _writer(data, known)
    reader = known.latest.get(writer.type_name)
    if EVENT_TYPES.get(writer.type_name) is None or reader is None:
        raise CodecError(
            f"schema {writer.path.name} is for event type {writer.type_name!r}, which pm does not know"
        )
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    # An upcast version is read as written (its own schema), then its payload reshaped in code.
    upcast = None if reader is writer else _upcasters.get((writer.type_name, writer.version))
    try:
        record = schemaless_reader(body, writer.parsed, None if reader is writer or upcast else reader.parsed)
    except Exception as exc:  # fastavro raises many kinds on corrupt input (EOFError, IndexError, ...)
        raise CodecError(f"corrupt {writer.type_name} body ({type(exc).__name__}: {exc})") from exc
    if body.tell() != len(data):
        raise CodecError(f"{writer.type_name}: {len(data) - body.tell()} trailing bytes after the Avro body")
    if not isinstance(record, dict):
        raise CodecError(f"{writer.type_name}: the Avro body is not a record")
    if upcast is not None:
        try:
            record = {**record, "payload": upcast(record["payload"])}
        except (ValueError, TypeError, KeyError) as exc:
            raise CodecError(f"invalid {writer.type_name}: {exc}") from exc
    return writer.type_name, record


def read_paths(
    data: bytes, paths: tuple[str, ...], known: SchemaRegistry | None = None
) -> tuple[str, dict[str, Any]]:
    """The event type and a few fields ({"payload.status": ...}, dotted paths) of a trusted record.

    What `read_fields` gives for those paths, without building the rest: a record written with its
    type's latest schema is walked by a `pm.avro_scan.Scanner` (strings, bytes, ints, None); any
    other is read whole (resolved or upcast as usual) and the paths picked from it. `known`: the
    `registry()` to use, for a caller that reads many records (it looks the environment up).
    """
    known = known or registry()
    try:
        type_name, scanner = known.scanners[(data[:HEADER_SIZE], paths)]
    except KeyError:
        writer = _writer(data, known)
        type_name, scanner = writer.type_name, None
        if EVENT_TYPES.get(type_name) is not None and known.latest.get(type_name) is writer:
            scanner = compile_scanner(writer.parsed, paths)
        known.scanners[(writer.header, paths)] = (type_name, scanner)
    if scanner is not None:
        try:
            return type_name, scanner.scan(data, HEADER_SIZE)
        except ScanError as exc:
            raise CodecError(f"corrupt {type_name} body ({exc})") from exc
    type_name, record = read_fields(data)
    found: dict[str, Any] = {}
    for path in paths:
        value: Any = record
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise CodecError(f"{type_name} has no field {path!r}")
            value = value[part]
        found[path] = value
    return type_name, found


def decode(data: bytes | bytearray | memoryview) -> Event:
    """The event in a record value, as its pydantic class, read with the latest schema of its type."""
    type_name, record = read_fields(data)
    try:
        return EVENT_TYPES[type_name].model_validate(record)
    except (ValidationError, ValueError, TypeError) as exc:
        raise CodecError(f"invalid {type_name}: {exc}") from exc
