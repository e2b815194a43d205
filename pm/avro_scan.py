"""A few fields of an Avro binary body, read without decoding the rest.

fastavro builds every field of a record (~1 us each, datetimes included): a rebuild that needs four
fields of a 20-field journal entry spent ~30 us per entry there. A `Scanner` is compiled once per
writer schema and wanted fields: it walks the body by the schema, slicing out the wanted fields and
stepping over the rest (a string or bytes field is one length read; an array written with block
sizes is skipped whole). It checks what a full read would: every length in bounds, the body read to
its last byte, and a union branch that exists; anything else is `ScanError`.

Only what the schema parsing supports is compiled: `compile_scanner` returns None for a schema it
cannot walk (the caller reads the whole body instead).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from pm.avro_codegen import MAX_DEPTH, SchemaCode, Unsupported

__all__ = ["ScanError", "Scanner", "compile_scanner"]

_FIXED_SIZE = {"null": 0, "boolean": 1, "float": 4, "double": 8}


class ScanError(ValueError):
    """The body does not hold what its schema says (truncated, overlong, a bad length or branch)."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro int and long) at `pos`: (value, position after it)."""
    byte = data[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos + 1
        shift += 7
        if shift > 63:
            raise ScanError("a varint longer than 10 bytes")


class _Compiler(SchemaCode):
    """Writes the walk as one Python function: each step inline, no call per field.

    A walk through closures cost as much as fastavro's full decode (a call per field and varint);
    inlined it is ~3x cheaper.
    """

    def varint(self, depth: int, target: str) -> None:
        """`target` = the zigzag varint at `pos`; the one-byte case inline."""
        self.emit(depth, "b = data[pos]")
        self.emit(depth, "if b < 128:")
        self.emit(depth + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        self.emit(depth + 1, "pos += 1")
        self.emit(depth, "elif data[pos + 1] < 128:  # two bytes: lengths of 64 to 8,191")
        self.emit(depth + 1, "n2 = (b & 127) | (data[pos + 1] << 7)")
        self.emit(depth + 1, f"{target} = (n2 >> 1) ^ -(n2 & 1)")
        self.emit(depth + 1, "pos += 2")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{target}, pos = _long(data, pos)")

    def skip_varint(self, depth: int) -> None:
        """Past the varint at `pos`, its value unread (a skipped int, long, enum or timestamp)."""
        self.emit(depth, "while data[pos] >= 128:")
        self.emit(depth + 1, "pos += 1")
        self.emit(depth, "pos += 1")

    def length(self, depth: int) -> None:
        """`n` = a checked string or bytes length at `pos`, `pos` moved to its first byte."""
        self.varint(depth, "n")
        self.emit(depth, "if n < 0 or pos + n > size:")
        self.emit(depth + 1, "raise ScanError(f'a length of {n} at byte {pos} runs past the body ({size} bytes)')")

    def kind(self, schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        return str(schema["type"] if isinstance(schema, dict) else schema)

    def step(self, schema: Any, depth: int, level: int, path: str | None = None, wanted: Any = None) -> None:
        """Code stepping over one value of `schema`; reading it into found[path] when `path` is given."""
        if level > MAX_DEPTH:
            raise Unsupported("nesting deeper than the scanner inlines (a recursive schema?)")
        schema = self.resolve(schema)
        kind = self.kind(schema)
        if kind == "record":
            self.record(schema, wanted if isinstance(wanted, dict) else {}, depth, level, f"{path}." if path else "")
            return
        if isinstance(wanted, dict):
            raise Unsupported(f"{path} is not a record")
        if kind == "union":
            index = self.fresh("u")
            self.varint(depth, index)
            for number, branch in enumerate(schema):
                self.emit(depth, f"{'if' if number == 0 else 'elif'} {index} == {number}:")
                before = len(self.lines)
                self.step(branch, depth + 1, level + 1, path)
                if len(self.lines) == before:
                    self.emit(depth + 1, "pass")  # a null skipped
            self.emit(depth, "else:")
            self.emit(depth + 1, f"raise ScanError(f'union branch {{{index}}} of {len(schema)}')")
            return
        if path is not None:
            self.read(schema, kind, depth, f"found[{path!r}]")
            return
        if kind in ("int", "long", "enum"):
            self.skip_varint(depth)
        elif kind in ("string", "bytes"):
            self.length(depth)
            self.emit(depth, "pos += n")
        elif kind in _FIXED_SIZE or kind == "fixed":
            width = _FIXED_SIZE[kind] if kind in _FIXED_SIZE else int(schema["size"])
            if width:
                self.emit(depth, f"pos += {width}")
        elif kind in ("array", "map"):
            self.blocks(schema, kind, depth, level)
        else:
            raise Unsupported(f"type {kind!r}")

    def read(self, schema: Any, kind: str, depth: int, target: str) -> None:
        """Code putting the value at `pos` in `target`: a string, bytes, an int, None (a null branch),
        or a list of those (an array of strings, bytes or ints)."""
        if kind == "null":
            self.emit(depth, f"{target} = None")
        elif kind in ("string", "bytes"):
            self.length(depth)
            self.emit(depth, f"{target} = data[pos : pos + n]{'.decode()' if kind == 'string' else ''}")
            self.emit(depth, "pos += n")
        elif kind in ("int", "long"):
            self.varint(depth, "n")
            self.emit(depth, f"{target} = n")
        elif kind == "array":
            item = self.resolve(schema["items"])
            item_kind = self.kind(item)
            if item_kind not in ("string", "bytes", "int", "long"):
                raise Unsupported(f"reading an array of {item_kind!r}")
            items = self.fresh("items")
            self.emit(depth, f"{items} = []")
            self.block_loop(depth, step_over_sized=False)
            self.read(item, item_kind, depth + 2, "v")
            self.emit(depth + 2, f"{items}.append(v)")
            self.emit(depth, f"{target} = {items}")
        else:
            raise Unsupported(f"reading a field of type {kind!r}")

    def block_loop(self, depth: int, *, step_over_sized: bool) -> None:
        """The loop over an array's or map's blocks, up to `for _ in range(count):` (its body at depth + 2).

        A block may give its size in bytes after a negative count: checked, then stepped over whole
        (`step_over_sized`) or its items read. A count is bounded by the bytes left (items take one or more).
        """
        count = self.fresh("c")
        self.emit(depth, "while True:")
        self.varint(depth + 1, count)
        self.emit(depth + 1, f"if {count} == 0:")
        self.emit(depth + 2, "break")
        self.emit(depth + 1, f"if {count} < 0:  # the block's size in bytes follows")
        self.emit(depth + 2, f"{count} = -{count}")
        self.length(depth + 2)
        if step_over_sized:
            self.emit(depth + 2, "pos += n")
            self.emit(depth + 2, "continue")
        self.emit(depth + 1, f"if {count} > size - pos:")
        self.emit(depth + 2, f"raise ScanError(f'a block of {{{count}}} items in {{size - pos}} bytes')")
        self.emit(depth + 1, f"for _ in range({count}):")

    def blocks(self, schema: Mapping[str, Any], kind: str, depth: int, level: int) -> None:
        item = schema["items"] if kind == "array" else schema["values"]
        if kind == "array" and self.may_be_empty(item):
            raise Unsupported("an array of items that may take no bytes (its count is unbounded)")
        self.block_loop(depth, step_over_sized=True)
        before = len(self.lines)
        if kind == "map":
            self.step("string", depth + 2, level + 1)
        self.step(item, depth + 2, level + 1)
        if len(self.lines) == before:
            self.emit(depth + 2, "pass")

    def may_be_empty(self, schema: Any, level: int = 0) -> bool:
        schema = self.resolve(schema)
        if schema == "null" or level > MAX_DEPTH:
            return True
        if isinstance(schema, list):
            return any(self.may_be_empty(branch, level + 1) for branch in schema)
        if isinstance(schema, dict) and schema.get("type") == "record":
            return all(self.may_be_empty(field["type"], level + 1) for field in schema["fields"])
        return False

    def record(self, schema: Mapping[str, Any], wanted: Mapping[str, Any], depth: int, level: int, prefix: str) -> None:
        names = {field["name"] for field in schema["fields"]}
        if set(wanted) - names:
            raise Unsupported(f"no field {sorted(set(wanted) - names)} in {schema.get('name')}")
        for field in schema["fields"]:
            inner = wanted.get(field["name"])
            path = f"{prefix}{field['name']}" if inner is not None else None
            self.step(field["type"], depth, level + 1, path, inner if isinstance(inner, dict) else None)

    def function(self, schema: Mapping[str, Any], wanted: Mapping[str, Any]) -> Callable[..., int]:
        self.emit(0, "def walk(data, pos, found):")
        self.emit(1, "size = len(data)")
        self.record(schema, wanted, 1, 0, "")
        self.emit(1, "return pos")
        namespace: dict[str, Any] = {"_long": _long, "ScanError": ScanError}
        walk: Callable[..., int] = self.build("walk", f"avro scan of {schema.get('name')}", namespace)
        return walk


def _tree(paths: Collection[str]) -> dict[str, Any]:
    """{"a.b", "c"} -> {"a": {"b": True}, "c": True}."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if node is True:
                raise ValueError(f"{path}: a parent of it is wanted whole")
        node[leaf] = True
    return tree


class Scanner:
    """Reads the wanted fields (dotted paths into nested records) of bodies written with one schema."""

    def __init__(self, walk: Callable[..., int]) -> None:
        self._walk = walk

    def scan(self, data: bytes, start: int = 0) -> dict[str, Any]:
        """{path: value} for the wanted fields of the body at data[start:]; ScanError if it is not well formed."""
        found: dict[str, Any] = {}
        try:
            end = self._walk(data, start, found)
        except IndexError as exc:
            raise ScanError(f"the body ends inside a field ({len(data) - start} bytes)") from exc
        except UnicodeDecodeError as exc:
            raise ScanError(f"a string that is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
        if end != len(data):
            raise ScanError(f"{len(data) - end} bytes after the body" if end < len(data) else "the body is cut short")
        return found


def compile_scanner(parsed_schema: Mapping[str, Any], paths: Collection[str]) -> Scanner | None:
    """A `Scanner` for a record schema (as fastavro parses it), or None if it cannot walk the schema."""
    compiler = _Compiler(parsed_schema.get("__named_schemas", {}))
    try:
        return Scanner(compiler.function(parsed_schema, _tree(paths)))
    except Unsupported:
        return None
