"""The composition root: one `App` declares what a deployment runs, and every `pm` command loads it.

    from pm.app import App, StartTopic, StepSpec

    app = App(
        name="tickets",
        processes=[TICKET],
        steps=[StepSpec("triage", Triage, (Triaged,), "tickets.steps:build_handler")],
        start_topics=[StartTopic("ticket.opened")],
        schema_dir="schemas",
    )

`pm --app tickets.app:app ...` (or `PM_APP`, or `app:` in the config file) loads it, with the
current directory importable. Without one `pm` runs the app an installed package declares as
its default (entry point `default` in the group `pm.apps`; this repository's: the bundled
reference app). The core never imports an app by name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pm.codec import add_schema_dir
from pm.errors import PmError
from pm.events import Event
from pm.process import ProcessDefinition

__all__ = [
    "App",
    "AppError",
    "StartTopic",
    "StepSpec",
    "CORE_INPUT_TOPICS",
    "APPS_GROUP",
    "app_spec",
    "load_app",
    "resolve",
]

# The PM's inputs every app shares: approvals, step results, its own timers and operators' commands.
CORE_INPUT_TOPICS = ("approvals", "step.results", "pm.timers", "pm.operator")
# Where the app to run when none is configured is declared: an installed package's entry point.
APPS_GROUP = "pm.apps"
DEFAULT_ENTRY = "default"

_STEP_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class AppError(PmError, ValueError):
    """An app that cannot be loaded or is inconsistent; the message says what to fix."""


def resolve(target: str) -> Any:
    """`module:attribute` (attribute may be dotted) imported, with the current directory importable."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise AppError(f"{target!r} is not module:attribute (e.g. myapp.app:app)")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # a team's app lives beside its config, not inside this package
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"cannot import {module_name!r} (from {target!r}): {exc}") from exc
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError as exc:
            raise AppError(f"{module_name!r} has no attribute {attribute!r}") from exc
    return value


@dataclass(frozen=True)
class StepSpec:
    """One step: its name (topic `cmd.<name>`), command type, result types and handler factory.

    `handler` is `module:factory` (imported only when this step runs, so one step never loads
    another's dependencies) or the factory itself: `factory(config, **options) -> handler`, where the
    handler has `step` (this name) and `handle(command, now) -> Event`. `options` names the
    `pm run consumer` flags the factory takes (e.g. rpm, tpm, llm_latency_ms); code may pass others.
    """

    name: str
    command: type[Event]
    results: tuple[type[Event], ...]
    handler: str | Callable[..., Any]
    options: tuple[str, ...] = ()

    @property
    def topic(self) -> str:
        return f"cmd.{self.name}"

    def build_handler(self, config: Any, **options: Any) -> Any:
        factory = resolve(self.handler) if isinstance(self.handler, str) else self.handler
        return factory(config, **options)


@dataclass(frozen=True)
class StartTopic:
    """A topic whose events may open a new process; `backpressure`: paused above --max-active.

    `pm emit NAME --file F` (NAME: the topic or its `alias`) turns each JSON line into an event with
    `parse` (`module:function` or the function; it raises `pm.process.InvalidInput`, or any
    ValueError, for a line that must not be published: the line goes to the DLQ with the reason).
    """

    name: str
    backpressure: bool = True
    alias: str | None = None
    parse: str | Callable[[Any], Event] | None = None

    def parser(self) -> Callable[[Any], Event]:
        if self.parse is None:
            raise AppError(f"start topic {self.name!r} declares no parse function for `pm emit`")
        return resolve(self.parse) if isinstance(self.parse, str) else self.parse


@dataclass(frozen=True)
class App:
    """What one deployment runs. Construct it in your own module; `pm --app module:attr` loads it."""

    name: str
    processes: tuple[ProcessDefinition[Any], ...]
    steps: tuple[StepSpec, ...]
    start_topics: tuple[StartTopic, ...]
    # The app's own event types beyond its steps' commands and results (e.g. its start events).
    events: tuple[type[Event], ...] = ()
    # Folder of this app's Avro schemas (`pm schemas generate` writes it); relative paths are
    # relative to the module that defines the app.
    schema_dir: Path | None = None
    # Per-topic options that topics.yaml does not set: {"cmd.my-step": {"partitions": 3}}.
    topic_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Dev services `pm run service NAME [ARGS]` starts: name -> `module:main`, main(argv, config) -> int.
    services: Mapping[str, str | Callable[..., int]] = field(default_factory=dict)
    # `pm demo`: `module:run_demo`, run_demo(config, interactive=, workdir=) -> exit status.
    demo: str | Callable[..., int] | None = None

    def __init__(
        self,
        name: str,
        processes: Iterable[ProcessDefinition[Any]],
        steps: Iterable[StepSpec],
        start_topics: Iterable[StartTopic | str],
        *,
        events: Iterable[type[Event]] = (),
        schema_dir: str | Path | None = None,
        topic_options: Mapping[str, Mapping[str, Any]] | None = None,
        services: Mapping[str, str | Callable[..., int]] | None = None,
        demo: str | Callable[..., int] | None = None,
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "processes", tuple(processes))
        object.__setattr__(self, "steps", tuple(steps))
        starts = tuple(s if isinstance(s, StartTopic) else StartTopic(s) for s in start_topics)
        object.__setattr__(self, "start_topics", starts)
        object.__setattr__(self, "events", tuple(events))
        object.__setattr__(self, "schema_dir", Path(schema_dir) if schema_dir is not None else None)
        object.__setattr__(self, "topic_options", dict(topic_options or {}))
        object.__setattr__(self, "services", dict(services or {}))
        object.__setattr__(self, "demo", demo)
        self._validate()

    def _validate(self) -> None:
        if not self.processes:
            raise AppError(f"app {self.name!r} declares no process")
        if not self.start_topics:
            raise AppError(f"app {self.name!r} declares no start topic")
        seen: set[str] = set()
        for step in self.steps:
            if not _STEP_NAME.fullmatch(step.name):
                raise AppError(f"step name {step.name!r}: use lower-case words joined by '-'")
            if step.name in seen:
                raise AppError(f"step {step.name!r} is declared twice")
            seen.add(step.name)
            declared = getattr(step.command, "STEP", None)
            if declared != step.name:
                raise AppError(
                    f"step {step.name!r}: its command {step.command.__name__} has STEP = {declared!r}"
                )
        reserved = {*CORE_INPUT_TOPICS, "pm.journal", "pm.dlq", "approvals.requested"}
        for start in self.start_topics:
            if not _TOPIC_NAME.fullmatch(start.name) or start.name in reserved or start.name.startswith("cmd."):
                raise AppError(f"start topic {start.name!r} is not a valid name of its own")

    # ------------------------------------------------------------ derived

    @property
    def input_topics(self) -> tuple[str, ...]:
        """Every topic the PM consumes (logical names), start topics first."""
        return (*(s.name for s in self.start_topics), *CORE_INPUT_TOPICS)

    @property
    def backpressure_topics(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.start_topics if s.backpressure)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    @property
    def event_types(self) -> tuple[type[Event], ...]:
        """Every event type the app defines: `events`, then each step's command and results (no duplicates)."""
        found = [*self.events]
        for step in self.steps:
            found += [step.command, *step.results]
        return tuple(dict.fromkeys(found))

    def start_topic(self, name: str) -> StartTopic:
        """The start topic called `name` (or aliased so)."""
        for start in self.start_topics:
            if name in (start.name, start.alias):
                return start
        known = ", ".join(s.alias or s.name for s in self.start_topics)
        raise AppError(f"app {self.name!r} has no start topic {name!r}; its start topics: {known}")

    def service(self, name: str) -> Callable[..., int]:
        """The dev service `name` (its `main(argv, config)`)."""
        target = self.services.get(name)
        if target is None:
            known = ", ".join(self.services) or "none"
            raise AppError(f"app {self.name!r} has no service {name!r}; its services: {known}")
        return resolve(target) if isinstance(target, str) else target

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise AppError(f"app {self.name!r} has no step {name!r}; its steps: {', '.join(self.step_names)}")

    def with_schema_dir(self, base: Path) -> App:
        """This app with a relative `schema_dir` made absolute against `base`."""
        if self.schema_dir is None or self.schema_dir.is_absolute():
            return self
        return App(
            self.name,
            self.processes,
            self.steps,
            self.start_topics,
            events=self.events,
            schema_dir=base / self.schema_dir,
            topic_options=self.topic_options,
            services=self.services,
            demo=self.demo,
        )


def _default_app() -> str:
    """`module:attr` of the installed default app (entry point `default` in group `pm.apps`)."""
    for entry in importlib.metadata.entry_points(group=APPS_GROUP, name=DEFAULT_ENTRY):
        return str(entry.value)
    raise AppError("no app configured: pass --app module:attr, or set PM_APP or `app:` in the config file")


def app_spec(target: str | None = None) -> str:
    """The `module:attr` that `load_app(target)` loads."""
    return target or os.environ.get("PM_APP") or _default_app()


def load_app(target: str | None = None) -> App:
    """The app at `target` (`module:attr`), else `PM_APP`, else the installed default app."""
    spec = app_spec(target)
    value = resolve(spec)
    if callable(value) and not isinstance(value, App):
        value = value()  # a factory: `module:make_app`
    if not isinstance(value, App):
        raise AppError(f"{spec!r} is a {type(value).__name__}, not a pm.App")
    module = sys.modules.get(spec.partition(":")[0])
    where = getattr(module, "__file__", None)
    app = value.with_schema_dir(Path(where).parent) if where else value
    if app.schema_dir is not None:
        add_schema_dir(app.schema_dir)  # its events decode wherever the app is loaded
    return app
