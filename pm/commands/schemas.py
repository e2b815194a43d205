"""`pm schemas generate|check`: the app's Avro schemas (and the core ones) from the models, kept current."""

from __future__ import annotations

import argparse
from pathlib import Path

from pm import codec
from pm.app import App, AppError, load_app
from pm.config import Config
from pm.events import Event
from pm.schemas import compatibility_problems, core_event_types, generate, kept_versions, stale

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    schemas = subparsers.add_parser("schemas", help="generate and check the Avro schemas of the app")
    actions = schemas.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = actions.add_parser(
        "generate", parents=[common], help="write <Type>.avsc for the app's event types into its schema_dir"
    )
    gen.add_argument(
        "--core", action="store_true", help="also write the core event types into the core schema folder"
    )
    gen.set_defaults(handler=_generate)
    check = actions.add_parser(
        "check",
        parents=[common],
        help="exit 1 if a schema is missing or stale, or the latest cannot read a kept older version",
    )
    check.add_argument(
        "--core",
        action="store_true",
        help="also check the older versions kept in the core folder (the bundled app's own folder)",
    )
    check.set_defaults(handler=_check)


def _app_with_schemas(config: Config) -> tuple[App, Path]:
    app = load_app(config.app or None)
    if app.schema_dir is None:
        raise AppError(f"app {app.name!r} has no schema_dir; declare App(..., schema_dir='schemas')")
    return app, app.schema_dir


def _folders(config: Config) -> list[tuple[Path, tuple[type[Event], ...]]]:
    """(folder, the types whose latest schema it holds): the app's, then the core one."""
    app, app_dir = _app_with_schemas(config)
    return [(app_dir, app.event_types), (codec.schema_dir(), core_event_types())]


def _generate(args: argparse.Namespace, config: Config) -> int:
    folders = _folders(config)
    written: list[Path] = []
    total = 0
    for directory, event_types in folders if args.core else folders[:1]:
        written += generate(event_types, directory)
        total += len(event_types)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} written, {total - len(written)} up to date")
    return 0


def _check(args: argparse.Namespace, config: Config) -> int:
    folders = _folders(config)
    (app_dir, _), (core_dir, _) = folders
    problems: list[str] = []
    files: set[Path] = set()
    for directory, event_types in folders:
        problems += [f"stale: {p}" for p in stale(event_types, directory)]
        files |= {(directory / f"{cls.TYPE}.avsc").resolve() for cls in event_types}
    # Older versions kept in the core folder were written by the bundled app (read through its
    # upcasters): another app checks its own folder's history, and the core's only on request.
    directories = list(dict.fromkeys(d.resolve() for d in ([app_dir, core_dir] if args.core else [app_dir])))
    old = [path for d in directories for path in kept_versions(d)]
    for directory in directories:
        problems += [f"incompatible: {p}" for p in compatibility_problems(directory)]
    if not problems:
        try:  # what the codec will do at run time: both folders together, no conflicting type
            codec.SchemaRegistry(core_dir, [app_dir])
        except codec.CodecError as exc:
            problems.append(f"conflict: {exc}")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"ok: {len(files)} schemas up to date, {len(old)} older versions readable")
    return 0
