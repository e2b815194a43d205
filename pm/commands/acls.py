"""`pm acls`: the Kafka ACLs each component needs, printed as kafka-acls.sh lines or JSON, or applied.

One principal per component (defaults `User:pm-manager`, `User:pm-step-<step>`,
`User:pm-review`, `User:pm-upstream`, `User:pm-ops`; `--principal COMPONENT=User:NAME`
overrides one). `--apply` creates the bindings with `AdminClient.create_acls` (the
principal running it needs `Alter` on the cluster) and reports each; creating a binding
that exists already succeeds. See docs/security.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pm.acls import (
    Grant,
    acl_grants,
    parse_principal_overrides,
    render_json,
    render_kafka_acls,
    to_kafka_binding,
)
from pm.app import load_app
from pm.config import Config
from pm.errors import PmError
from pm.topics import load_layout

__all__ = ["register", "AclsRefused", "apply_grants"]

_LOCAL_BROKER_HINT = (
    "the local broker does not enforce ACLs; apply them on Apache Kafka with an authorizer configured "
    "(`pm acls` prints the kafka-acls.sh lines)"
)


class AclsRefused(PmError, RuntimeError):
    """The broker did not create (all) the bindings; the message says why and what to do."""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    acls = subparsers.add_parser(
        "acls",
        parents=[common],
        help="the Kafka ACLs of each component: print them (kafka-acls.sh lines, JSON) or --apply",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    acls.add_argument(
        "--component",
        action="append",
        metavar="NAME",
        help="only this component (repeatable): pm, step (every step), step:<step>, step:<a>+<b> (steps on one consumer), review, upstream, ops",
    )
    acls.add_argument(
        "--principal",
        action="append",
        default=[],
        metavar="COMPONENT=User:NAME",
        help="the principal of a component (repeatable), e.g. step:classify=User:llm-worker",
    )
    acls.add_argument(
        "--format",
        choices=("kafka-acls", "json"),
        default="kafka-acls",
        help="kafka-acls.sh lines grouped by component (default), or a JSON array of bindings",
    )
    acls.add_argument(
        "--apply", action="store_true", help="create the bindings on the broker (AdminClient.create_acls)"
    )
    acls.add_argument("--file", type=Path, default=None, help="topics file (default: the repo's topics.yaml)")
    acls.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)"
    )
    acls.set_defaults(handler=_acls)


def _acls(args: argparse.Namespace, config: Config) -> int:
    layout = load_layout(args.file, app=load_app(config.app or None))
    principals = parse_principal_overrides(args.principal, layout)
    grants = acl_grants(config, layout, components=args.component, principals=principals)
    if not args.apply:
        if args.format == "json":
            sys.stdout.write(render_json(grants))
        else:
            sys.stdout.write(render_kafka_acls(grants, config.resolved_bootstrap))
        return 0
    flat = [g for rules in grants.values() for g in rules]
    results = apply_grants(config, flat, args.timeout)
    failed = [(g, e) for g, e in results if e is not None]
    if args.format == "json":
        print(json.dumps([{**g.to_json(), "error": e} for g, e in results], indent=2))
    else:
        for grant, error in results:
            print(
                f"{'ok    ' if error is None else 'FAILED'} {grant.describe()}"
                + (f": {error}" if error else "")
            )
    if failed:
        raise AclsRefused(_refusal(failed, len(results)))
    print(f"{len(results)} ACL bindings created (or already present)", file=sys.stderr)
    return 0


def _refusal(failed: Sequence[tuple[Grant, str | None]], total: int) -> str:
    errors = sorted({str(e) for _, e in failed})
    if all(e.startswith(("_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN")) for e in errors):
        return f"could not reach the broker to create ACLs: {'; '.join(errors[:3])}"
    text = f"the broker refused ACLs: {len(failed)} of {total} not created: {'; '.join(errors[:3])}"
    if any("SECURITY_DISABLED" in e for e in errors):
        text += (
            "; the broker has no authorizer: configure one (KRaft: authorizer.class.name="
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer) and run again"
        )
    elif any("AUTHORIZATION_FAILED" in e for e in errors):
        text += "; the principal running `pm acls --apply` needs Alter on the cluster (run it as an admin)"
    return text


# ---------------------------------------------------------------- applying, in a child process


def apply_grants(
    config: Config, grants: Sequence[Grant], timeout: float = 30.0
) -> list[tuple[Grant, str | None]]:
    """Create the bindings; each grant with None (created or already present) or the broker's error.

    `create_acls` runs in a child process: librdkafka 2.16 aborts the whole process (an
    assertion, not an exception) when a broker answers CreateAcls without per-binding
    results, which is what the local Tansu broker does. A child can die; the CLI must not.
    """
    if not grants:
        return []
    request = {
        "bootstrap": config.resolved_bootstrap,
        "kafka": dict(config.kafka),
        "timeout": timeout,
        "grants": [g.to_json() for g in grants],
    }
    # The child must import this very `pm` even when it is not installed (a checkout on sys.path).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        child = subprocess.run(
            [sys.executable, "-m", "pm.commands.acls"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout + 15,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AclsRefused(
            f"the broker did not answer CreateAcls within {timeout + 15:.0f}s; is it up?"
        ) from exc
    errors: dict[int, str | None] = {}
    for line in child.stdout.splitlines():
        try:
            row = json.loads(line)
            errors[int(row["index"])] = row["error"]
        except (ValueError, KeyError, TypeError):
            continue
    if child.returncode != 0 or len(errors) != len(grants):
        raise AclsRefused(_child_failure(child.returncode, child.stderr, len(grants)))
    return [(g, errors[i]) for i, g in enumerate(grants)]


def _child_failure(returncode: int, stderr: str, requested: int) -> str:
    """Why the child produced no per-binding answer, from its exit status and librdkafka's log."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # librdkafka's own words, without its log prefix; the "N were requested" line says it best.
    said = [line.split("]: ", 1)[-1] for line in lines if "acls in response" in line]
    said = said or [line.split("]: ", 1)[-1] for line in lines if "PROTOERR" in line]
    if said or returncode < 0:
        # What Tansu 0.6.0 does: it advertises CreateAcls but answers with no results at all.
        detail = "; ".join(dict.fromkeys(said)) or f"the client died with signal {-returncode}"
        return (
            f"the broker refused ACLs: its CreateAcls answer carried no result for the {requested} "
            f"bindings ({detail}); {_LOCAL_BROKER_HINT}"
        )
    last = lines[-1] if lines else f"exit status {returncode}"
    return f"could not create ACLs: the client process failed ({last})"


def _child_main() -> int:
    """Child side of `apply_grants`: JSON request on stdin, one JSON line per binding on stdout."""
    from confluent_kafka import KafkaError, KafkaException

    from pm.kafka import make_admin

    request: dict[str, Any] = json.load(sys.stdin)
    config = Config(bootstrap=request["bootstrap"], kafka=request["kafka"])
    grants = [Grant.from_json(g) for g in request["grants"]]
    bindings = [to_kafka_binding(g) for g in grants]
    admin = make_admin(config, "acls")
    # Two components may share a principal (overrides): create_acls rejects duplicate bindings.
    unique = list(dict.fromkeys(bindings))
    futures = admin.create_acls(unique, request_timeout=float(request["timeout"]))
    for index, binding in enumerate(bindings):
        error: str | None = None
        try:
            futures[binding].result()
        except KafkaException as exc:
            err = exc.args[0]
            error = f"{err.name()}: {err.str()}" if isinstance(err, KafkaError) else str(exc)
        print(json.dumps({"index": index, "error": error}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
