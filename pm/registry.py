"""Deployed process definitions, by name and version.

A new process starts on the newest version of the first definition whose
`starts(event)` is true. A running process keeps deciding with the version it
started on while that version is deployed; once it is not, its stored state is
upcast with the newest definition's `upcasters` (keyed by the version they
upgrade from) and the process continues on the newest version.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from pm.errors import PmError
from pm.events import Event
from pm.process import ProcessDefinition, ProcessState

__all__ = ["Registry", "RegistryError"]


class RegistryError(PmError, LookupError):
    """A stored process names a definition (or version) this deployment cannot run."""


class Registry:
    def __init__(self, definitions: Iterable[ProcessDefinition[Any]]) -> None:
        self._by_key: dict[tuple[str, int], ProcessDefinition[Any]] = {}
        self._order: list[str] = []
        for definition in definitions:
            _check_decide(definition)
            key = (definition.name, int(definition.version))
            if key in self._by_key:
                raise RegistryError(f"process definition {key[0]!r} version {key[1]} is registered twice")
            self._by_key[key] = definition
            if definition.name not in self._order:
                self._order.append(definition.name)
        if not self._by_key:
            raise RegistryError("no process definitions given")

    def latest(self, name: str) -> ProcessDefinition[Any]:
        versions = [v for (n, v) in self._by_key if n == name]
        if not versions:
            raise RegistryError(f"no deployed process definition named {name!r}")
        return self._by_key[(name, max(versions))]

    def get(self, name: str, version: int) -> ProcessDefinition[Any] | None:
        return self._by_key.get((name, int(version)))

    def starter(self, event: Event) -> ProcessDefinition[Any] | None:
        """The (newest) definition that opens a new process for `event`, or None."""
        for name in self._order:
            definition = self.latest(name)
            if definition.starts(event):
                return definition
        return None

    def resolve(
        self, name: str, version: int, state: Mapping[str, Any]
    ) -> tuple[ProcessDefinition[Any], ProcessState]:
        """The definition a stored process decides with, and its state loaded (upcast if needed)."""
        exact = self.get(name, version)
        if exact is not None:
            return exact, exact.state_type.model_validate(dict(state))
        latest = self.latest(name)
        if version > latest.version:
            raise RegistryError(
                f"process {name!r} version {version} is newer than the deployed version {latest.version}: "
                "deploy the newer definition"
            )
        data: Mapping[str, Any] = dict(state)
        for step in range(version, latest.version):
            upcaster = latest.upcasters.get(step)
            if upcaster is None:
                raise RegistryError(
                    f"process {name!r} started on version {version}, which is no longer deployed, and "
                    f"version {latest.version} has no upcaster from version {step}: add one to its `upcasters`"
                )
            data = upcaster(data)
        return latest, latest.state_type.model_validate(dict(data))


def _check_decide(definition: ProcessDefinition[Any]) -> None:
    """Refuse at start a `decide` that cannot take (state, event, now), instead of failing every process."""
    try:
        inspect.signature(definition.decide).bind(None, None, None)
    except TypeError as exc:
        raise RegistryError(
            f"process definition {definition.name!r} version {definition.version}: decide must take "
            f"(state, event, now) ({exc}); `now` is the decision time, see pm/process.py"
        ) from exc
    except ValueError:  # no signature to inspect (a builtin): let it be
        pass
