"""`pm run consumer|service|pm|all`: run one component (or all) in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pm.collector import quiet_collector
from pm.config import Config
from pm.errors import PmError
from pm.signals import stop_on_signals

__all__ = ["register", "child_specs"]

# `pm run consumer` flags that go to a step's handler factory, if the step declares them (StepSpec.options).
HANDLER_FLAGS = ("rpm", "tpm", "llm_latency_ms")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    run = subparsers.add_parser("run", help="run the PM, a step consumer, a local service, or all of them")
    parts = run.add_subparsers(dest="component", required=True, metavar="COMPONENT")

    consumer = parts.add_parser(
        "consumer", parents=[common], help="run a step consumer (one or several steps on one Kafka consumer)"
    )
    consumer.add_argument(
        "step",
        nargs="+",
        help="step(s) of the app (pm --app ...; default: the bundled app); several share one consumer and group",
    )
    consumer.add_argument(
        "--concurrency", type=int, default=4, help="commands handled at once, per step (default 4)"
    )
    consumer.add_argument("--rpm", type=float, default=None, help="steps that take it: requests per minute cap")
    consumer.add_argument("--tpm", type=float, default=None, help="steps that take it: tokens per minute cap")
    consumer.add_argument(
        "--retries", type=int, default=4, help="tries per command on transient errors (default 4)"
    )
    consumer.add_argument(
        "--llm-latency-ms",
        type=int,
        default=None,
        help="steps that take it (the LLM steps' offline provider): latency per call (benchmarks)",
    )
    consumer.set_defaults(handler=_consumer)

    service = parts.add_parser(
        "service", parents=[common], help="run a dev service of the app (App.services)"
    )
    service.add_argument("name", help="the service, as the app names it (App.services)")
    service.add_argument("args", nargs=argparse.REMAINDER, help="the service's own options")
    service.set_defaults(handler=_service)

    pm = parts.add_parser("pm", parents=[common], help="the process manager")
    pm.add_argument(
        "--max-active", type=int, default=None, help="pause the start topics above N active processes"
    )
    pm.add_argument("--rebuild", action="store_true", help="rebuild a store that does not match the journal")
    pm.add_argument(
        "--partitions",
        default=None,
        help="take these input partitions (all, or e.g. 0-2,5) without a consumer group join (PM_PARTITIONS)",
    )
    pm.set_defaults(handler=_pm)

    every = parts.add_parser("all", parents=[common], help="the PM and every step consumer, supervised")
    every.add_argument("--concurrency", type=int, default=4, help="per step consumer")
    every.add_argument("--max-active", type=int, default=None)
    every.add_argument(
        "--rebuild", action="store_true", help="the PM rebuilds a store that does not match the journal"
    )
    every.add_argument("--with-services", action="store_true", help="also run the app's dev services")
    every.add_argument(
        "--llm-latency-ms",
        type=int,
        default=None,
        help="steps that take --llm-latency-ms (offline LLM provider): latency per call",
    )
    every.add_argument(
        "--only", default=None, help="comma-separated subset: pm, step names, service names"
    )
    every.add_argument(
        "--together",
        action="append",
        default=[],
        metavar="STEP,STEP,...",
        help="run these steps in one step consumer (one process, one Kafka consumer); repeatable",
    )
    every.set_defaults(handler=_all)


def _logging() -> None:
    """INFO by default (PM_LOG_LEVEL to change it); per-request lines of HTTP clients only at DEBUG.

    httpx logs every request at INFO: one line per HTTP or LLM call of a step was a measurable share
    of a step consumer's CPU (issue 15) and buried the lines that matter.
    """
    level = logging.getLevelName(os.environ.get("PM_LOG_LEVEL", "INFO").upper())
    level = level if isinstance(level, int) else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


def _consumer(args: argparse.Namespace, config: Config) -> int:
    from pm.app import load_app
    from pm.steps.consumer import RetryPolicy, run_step_consumer
    from pm.telemetry import setup_telemetry
    from pm.topics import step_set_name

    app = load_app(config.app or None)
    steps = list(dict.fromkeys(args.step))  # a step named twice runs once
    specs = [app.step(name) for name in steps]  # an unknown step names the app's steps
    options: dict[str, float | int] = {
        k: getattr(args, k) for k in HANDLER_FLAGS if getattr(args, k) is not None
    }
    takes = sorted({option for spec in specs for option in spec.options})
    refused = sorted(set(options) - set(takes))
    if refused:
        flags = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise PmError(f"{flags} do(es) not apply to step(s) {', '.join(steps)} (they take: {', '.join(takes) or 'none'})")
    if args.llm_latency_ms is not None and args.llm_latency_ms < 0:
        raise PmError("--llm-latency-ms must be 0 or more")
    if args.concurrency < 1 or args.retries < 1:
        raise PmError("--concurrency and --retries must be at least 1")
    _logging()
    name = step_set_name(steps)
    setup_telemetry(f"pm-step-{name}")
    quiet_collector()
    topics = ", ".join(config.topic("cmd." + step) for step in steps)
    print(f"step consumer {name}: concurrency {args.concurrency} per step, topics {topics}", flush=True)
    consumer = run_step_consumer(
        config,
        steps,
        concurrency=args.concurrency,
        retry=RetryPolicy(tries=args.retries),
        options=options,
    )
    print(f"step consumer {name}: stopped {consumer.stats}", flush=True)
    return 0


def _service(args: argparse.Namespace, config: Config) -> int:
    from pm.app import load_app

    service = load_app(config.app or None).service(args.name)
    quiet_collector()
    return int(service(list(args.args), config))


def _pm(args: argparse.Namespace, config: Config) -> int:
    from pm.runtime import run_process_manager
    from pm.telemetry import setup_telemetry

    setup_telemetry("pm")
    config = config.with_overrides(partitions=args.partitions)
    options = {} if args.max_active is None else {"max_active": args.max_active}
    quiet_collector()
    # Again once started: what the start built and kept (the app, the stores' state) is frozen too.
    run_process_manager(config, rebuild=args.rebuild, on_started=lambda _manager: quiet_collector(), **options)
    return 0


def _config_flags(args: argparse.Namespace, config: Config) -> list[str]:
    """The supervisor's resolved configuration, passed to every child explicitly."""
    flags = [
        "--bootstrap",
        config.resolved_bootstrap,
        "--prefix",
        config.topic_prefix,
        "--state-dir",
        str(config.state_dir),
    ]
    if args.config is not None:
        flags += ["--config", str(args.config)]
    if config.app:
        flags += ["--app", config.app]
    return flags


def child_specs(args: argparse.Namespace, config: Config) -> list[tuple[str, list[str]]]:
    """(name, argv) of every child `pm run all` starts, in start order."""
    from pm.app import load_app
    from pm.topics import step_set_name

    app = load_app(config.app or None)
    step_names = app.step_names
    base = [sys.executable, "-m", "pm", "run"]
    flags = _config_flags(args, config)
    services = tuple(app.services)
    names = ["pm", *step_names] + (list(services) if args.with_services else [])
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        known = ("pm", *step_names, *services)
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise PmError(f"--only: unknown component(s) {unknown}; known: {', '.join(known)}")
        names = [n for n in known if n in wanted]
    together = _together(getattr(args, "together", []), step_names)
    specs: list[tuple[str, list[str]]] = []
    for name in names:
        if name == "pm":
            extra = [] if args.max_active is None else ["--max-active", str(args.max_active)]
            extra += ["--rebuild"] if getattr(args, "rebuild", False) else []
            specs.append((name, [*base, "pm", *flags, *extra]))
        elif name in step_names:
            group = [step for step in together.get(name, (name,)) if step in names]
            if group[0] != name:
                continue  # started with the first step of its group
            latency = getattr(args, "llm_latency_ms", None)
            takes = any("llm_latency_ms" in app.step(step).options for step in group)
            extra = ["--llm-latency-ms", str(latency)] if latency is not None and takes else []
            specs.append(
                (
                    step_set_name(group),
                    [*base, "consumer", *group, "--concurrency", str(args.concurrency), *extra, *flags],
                )
            )
        else:  # a dev service, on its defaults (from the configuration)
            specs.append((name, [*base, "service", *flags, name]))
    # Services first, so consumers find them on their first command.
    return sorted(specs, key=lambda s: s[0] not in services)


def _together(groups: list[str], step_names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """`--together a,b` options as step -> its group (in the app's step order); PmError if malformed."""
    together: dict[str, tuple[str, ...]] = {}
    for item in groups:
        wanted = {n.strip() for n in item.split(",") if n.strip()}
        unknown = sorted(wanted - set(step_names))
        if unknown:
            raise PmError(f"--together: unknown step(s) {unknown}; steps: {', '.join(step_names)}")
        twice = sorted(wanted & set(together))
        if twice:
            raise PmError(f"--together: step(s) {twice} are in two groups")
        group = tuple(n for n in step_names if n in wanted)
        together.update(dict.fromkeys(group, group))
    return together


def _all(args: argparse.Namespace, config: Config) -> int:
    from pm.supervisor import ChildSpec, Supervisor

    specs = [ChildSpec(name, argv) for name, argv in child_specs(args, config)]
    stop = stop_on_signals()
    supervisor = Supervisor(specs)
    supervisor.say(f"supervising {', '.join(s.name for s in specs)}; Ctrl-C or SIGTERM stops them all")
    return supervisor.run(stop)
