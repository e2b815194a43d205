"""What `pm.avro_scan` and `pm.avro_write` share: a Python function written line by line from a schema.

Both compile a schema into one function with every field's step inline (a call per field costs about
as much as the work it does); this holds the lines, fresh local names and named-type lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MAX_DEPTH", "SchemaCode", "Unsupported"]

MAX_DEPTH = 32  # nesting inlined at most (a recursive schema is refused)


class Unsupported(Exception):
    """A schema the generated code does not cover: the caller reads or writes it with fastavro."""


class SchemaCode:
    """The source of one generated function over a record schema (as fastavro parses it)."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named  # fastavro's `__named_schemas`: a named type used again is its name
        self.lines: list[str] = []
        self.counter = 0

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def fresh(self, stem: str) -> str:
        """A local name not used before in this function."""
        self.counter += 1
        return f"{stem}{self.counter}"

    def resolve(self, schema: Any) -> Any:
        """The definition of a named type, or `schema` itself."""
        if isinstance(schema, str) and schema in self.named:
            return self.named[schema]
        return schema

    def build(self, name: str, what: str, namespace: dict[str, Any]) -> Callable[..., Any]:
        """The function `name` defined by the lines, with `namespace` as its globals."""
        exec(compile("\n".join(self.lines), f"<{what}>", "exec"), namespace)  # noqa: S102
        built: Callable[..., Any] = namespace[name]
        return built
