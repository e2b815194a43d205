"""Which principal may do what on Kafka: the ACLs each `pm` component needs, and nothing more.

Pure: no broker is contacted. Names come from the same places the components take them
(topics.yaml and the topic prefix, the group and transactional IDs in pm/runtime/,
pm/steps/consumer.py, pm/review.py, pm/journal.py, pm/replay.py); tests/test_acls.py checks
them against the real code so the two cannot drift apart.

The separation the bindings hold (docs/security.md explains why):
- only step consumers write `step.results` (a forged result would steer a process);
- only review tools write `approvals` (decisions are HMAC-signed as well);
- only the PM writes `pm.journal`, `cmd.*` and `pm.timers` (the journal is the truth);
- only operations tools write `pm.operator` (release a quarantine, resume or escalate a process);
- every component may write `pm.dlq` (each dead-letters what it cannot process).

Every producer `pm` makes is idempotent (pm/kafka.py), so each writing component also
gets `IdempotentWrite` on the cluster: required before Kafka 3.0, implied by any topic
`Write` since (KIP-679), harmless either way.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from confluent_kafka.admin import AclBinding as KafkaAclBinding
from confluent_kafka.admin import (
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
)
from confluent_kafka.admin import ResourceType as KafkaResourceType

from pm.app import CORE_INPUT_TOPICS
from pm.config import Config
from pm.dlq import DLQ_TOPIC
from pm.errors import PmError
from pm.journal import JOURNAL_TOPIC
from pm.operator import OPERATOR_TOPIC
from pm.review import DECISIONS_TOPIC, REQUESTS_TOPIC
from pm.topics import STEP_TOPIC_PREFIX, TopicLayout, load_layout, step_set_name

__all__ = [
    "AclError",
    "ResourceType",
    "PatternType",
    "Operation",
    "Grant",
    "PM",
    "REVIEW",
    "UPSTREAM",
    "OPS",
    "STEP_COMPONENT_PREFIX",
    "CLUSTER_NAME",
    "step_names",
    "component_names",
    "describe_component",
    "combined_steps",
    "default_principal",
    "parse_principal_overrides",
    "select_components",
    "component_grants",
    "acl_grants",
    "kafka_acls_line",
    "render_kafka_acls",
    "render_json",
    "to_kafka_binding",
]

PM = "pm"
REVIEW = "review"
UPSTREAM = "upstream"
OPS = "ops"
STEP_COMPONENT_PREFIX = "step:"
CLUSTER_NAME = "kafka-cluster"  # the only name Kafka accepts for the cluster resource

# Consumer-group names as the code builds them (see the module docstring for where).
_PM_GROUP = "pm"  # ProcessManager.group_id, after the topic prefix
_JOURNAL_READER_GROUPS = "pm-journal-"  # pm-journal-meta / -reader-<id> / -estimate, after the prefix
_STEP_GROUP = "step-"  # StepConsumer.group_id: <prefix>step-<name>
_REVIEW_GROUPS = "pm-review-"  # ReviewClient: pm-review-<uuid>, *without* the topic prefix
_OPS_GROUPS = "pm-ops-"  # operators' own consumers (kafka-console-consumer --group <prefix>pm-ops-NAME)


class AclError(PmError, ValueError):
    """A component or principal given on the command line is not valid."""


class ResourceType(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    TRANSACTIONAL_ID = "transactional_id"
    CLUSTER = "cluster"


class PatternType(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    """Values are the names `kafka-acls.sh --operation` takes."""

    READ = "Read"
    WRITE = "Write"
    DESCRIBE = "Describe"
    IDEMPOTENT_WRITE = "IdempotentWrite"


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW binding: `principal` may do `operation` on the resource (physical names, prefix applied)."""

    component: str
    principal: str
    resource_type: ResourceType
    name: str
    operation: Operation
    pattern: PatternType = PatternType.LITERAL
    permission: str = "allow"  # deny rules are never needed: Kafka denies what is not allowed
    host: str = "*"

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Grant:
        return cls(
            component=data["component"],
            principal=data["principal"],
            resource_type=ResourceType(data["resource_type"]),
            name=data["name"],
            operation=Operation(data["operation"]),
            pattern=PatternType(data.get("pattern", PatternType.LITERAL)),
            permission=data.get("permission", "allow"),
            host=data.get("host", "*"),
        )

    def describe(self) -> str:
        """`User:pm-manager Write topic pm.journal` (one line, for reports)."""
        where = (
            f"{self.resource_type} {self.name}"
            if self.resource_type is not ResourceType.CLUSTER
            else "cluster"
        )
        return f"{self.principal} {self.operation} {where}" + (
            " (prefixed)" if self.pattern is PatternType.PREFIXED else ""
        )


# ---------------------------------------------------------------- components


def step_names(layout: TopicLayout) -> tuple[str, ...]:
    """The steps, from the `cmd.<step>` topics of topics.yaml (each has its own step consumer)."""
    return tuple(
        name[len(STEP_TOPIC_PREFIX) :] for name in layout.topics if name.startswith(STEP_TOPIC_PREFIX)
    )


def component_names(layout: TopicLayout) -> tuple[str, ...]:
    return (PM, *(STEP_COMPONENT_PREFIX + s for s in step_names(layout)), REVIEW, UPSTREAM, OPS)


def combined_steps(component: str, layout: TopicLayout) -> tuple[str, ...] | None:
    """The steps of `step:a+b` (several steps on one consumer: `pm run consumer a b`), else None."""
    if not component.startswith(STEP_COMPONENT_PREFIX) or "+" not in component:
        return None
    parts = component[len(STEP_COMPONENT_PREFIX) :].split("+")
    known = step_names(layout)
    unknown = [p for p in parts if p not in known]
    if unknown or len(set(parts)) != len(parts):
        raise AclError(f"{component!r}: steps joined by '+', each once; topics.yaml has {', '.join(known)}")
    return tuple(sorted(parts))  # the order of `step_set_name`


def _canonical(component: str, layout: TopicLayout) -> str | None:
    """`step:b+a` / `b+a` as `step:a+b` (the consumer's group order); None when not a combination."""
    name = component if component.startswith(STEP_COMPONENT_PREFIX) else STEP_COMPONENT_PREFIX + component
    steps = combined_steps(name, layout)
    return None if steps is None else STEP_COMPONENT_PREFIX + step_set_name(steps)


def describe_component(component: str) -> str:
    """One line for the comment header of a component's bindings."""
    if component.startswith(STEP_COMPONENT_PREFIX):
        step = component[len(STEP_COMPONENT_PREFIX) :]
        if "+" in step:
            return f"the {', '.join(step.split('+'))} steps on one consumer (`pm run consumer {step.replace('+', ' ')}`)"
        return f"the {step} step consumer (`pm run consumer {step}`)"
    return {
        PM: "the process manager (`pm run pm`)",
        REVIEW: "review tools (`pm approvals ...`, pm.review.ReviewClient)",
        UPSTREAM: "upstream producers of the app's start topics (`pm emit NAME`)",
        OPS: "operations tools (`pm replay`, `pm inspect`, `pm topics check`; `pm quarantine release`, "
        "`pm resume`, `pm escalate` write pm.operator)",
    }[component]


def default_principal(component: str) -> str:
    if component.startswith(STEP_COMPONENT_PREFIX):
        return f"User:pm-step-{component[len(STEP_COMPONENT_PREFIX) :]}"
    return {
        PM: "User:pm-manager",
        REVIEW: "User:pm-review",
        UPSTREAM: "User:pm-upstream",
        OPS: "User:pm-ops",
    }[component]


def parse_principal_overrides(items: Iterable[str], layout: TopicLayout) -> dict[str, str]:
    """`COMPONENT=Type:name` items (e.g. `step:classify=User:llm-worker`) as a mapping, validated."""
    known = component_names(layout)
    overrides: dict[str, str] = {}
    for item in items:
        component, sep, principal = item.partition("=")
        component, principal = component.strip(), principal.strip()
        if not sep or not component:
            raise AclError(f"--principal {item!r}: expected COMPONENT=User:NAME")
        combined = _canonical(component, layout)
        component = combined or component
        if component not in known and combined is None:
            raise AclError(
                f"--principal {item!r}: unknown component {component!r}; one of {', '.join(known)}"
            )
        kind, colon, name = principal.partition(":")
        # Kafka principals are always TYPE:NAME; a bare name would silently match nobody.
        if not colon or not kind or not name:
            raise AclError(f"--principal {item!r}: a principal looks like User:NAME")
        overrides[component] = principal
    return overrides


def select_components(wanted: Sequence[str] | None, layout: TopicLayout) -> tuple[str, ...]:
    """The components named (`step` means every step consumer), in canonical order; all when none."""
    known = component_names(layout)
    if not wanted:
        return known
    chosen: set[str] = set()
    combinations: list[str] = []  # several steps on one consumer, after the known components
    for name in wanted:
        combined = _canonical(name, layout)
        if combined is not None:
            if combined not in combinations:
                combinations.append(combined)
        elif name == "step":
            chosen.update(c for c in known if c.startswith(STEP_COMPONENT_PREFIX))
        elif name in known:
            chosen.add(name)
        elif STEP_COMPONENT_PREFIX + name in known:  # a bare step name is unambiguous
            chosen.add(STEP_COMPONENT_PREFIX + name)
        else:
            raise AclError(f"unknown component {name!r}; one of step, {', '.join(known)}")
    return (*(c for c in known if c in chosen), *combinations)


# ---------------------------------------------------------------- bindings


def component_grants(config: Config, component: str, principal: str, layout: TopicLayout) -> list[Grant]:
    """Every binding one component needs, with the configured topic prefix applied."""
    prefix = config.topic_prefix
    grants: list[Grant] = []

    def add(kind: ResourceType, name: str, op: Operation, pattern: PatternType = PatternType.LITERAL) -> None:
        grant = Grant(component, principal, kind, name, op, pattern)
        if grant not in grants:
            grants.append(grant)

    def topics(op: Operation, *logical: str) -> None:
        for name in logical:
            add(ResourceType.TOPIC, config.topic(name), op)

    def idempotent_producer() -> None:
        add(ResourceType.CLUSTER, CLUSTER_NAME, Operation.IDEMPOTENT_WRITE)

    steps = step_names(layout)
    # The PM's inputs are the co-partitioned topics but the journal; the app's start topics are those
    # inputs that are not the core's (approvals, step.results, pm.timers).
    inputs = [t for t in layout.co_partitioned if t != JOURNAL_TOPIC]
    starts = [t for t in inputs if t not in CORE_INPUT_TOPICS]
    if component == PM:
        topics(Operation.READ, *inputs, JOURNAL_TOPIC)  # inputs, and the journal for catch-up
        topics(
            Operation.WRITE,
            JOURNAL_TOPIC,
            *(STEP_TOPIC_PREFIX + s for s in steps),
            "pm.timers",
            REQUESTS_TOPIC,
            DLQ_TOPIC,
        )
        add(ResourceType.GROUP, prefix + _PM_GROUP, Operation.READ)
        # Journal readers (catch-up, partition lookup) use throwaway groups under one prefix.
        add(ResourceType.GROUP, prefix + _JOURNAL_READER_GROUPS, Operation.READ, PatternType.PREFIXED)
        # transactional.id = pm-<prefix><instance_id>: one prefix covers every instance.
        add(ResourceType.TRANSACTIONAL_ID, f"pm-{prefix}", Operation.WRITE, PatternType.PREFIXED)
        idempotent_producer()
    elif component.startswith(STEP_COMPONENT_PREFIX):
        step = component[len(STEP_COMPONENT_PREFIX) :]
        # One step, or several on one consumer (`step:a+b`: its group is step-a+b, steps sorted).
        members = combined_steps(component, layout) or (step,)
        if step not in steps and len(members) == 1:
            raise AclError(f"unknown step {step!r}; topics.yaml has {', '.join(steps)}")
        topics(Operation.READ, *(STEP_TOPIC_PREFIX + s for s in members))
        topics(Operation.WRITE, "step.results", DLQ_TOPIC)
        # Step consumers commit offsets themselves and produce without transactions (pm/steps/consumer.py).
        add(ResourceType.GROUP, f"{prefix}{_STEP_GROUP}{step_set_name(members)}", Operation.READ)
        idempotent_producer()
    elif component == REVIEW:
        # Decisions are read too: a request is pending until an acceptable decision exists.
        topics(Operation.READ, REQUESTS_TOPIC, DECISIONS_TOPIC)
        topics(Operation.WRITE, DECISIONS_TOPIC, DLQ_TOPIC)
        add(ResourceType.GROUP, _REVIEW_GROUPS, Operation.READ, PatternType.PREFIXED)
        idempotent_producer()
    elif component == UPSTREAM:
        topics(Operation.WRITE, *starts, DLQ_TOPIC)
        idempotent_producer()
    elif component == OPS:
        topics(Operation.READ, JOURNAL_TOPIC, DLQ_TOPIC)
        topics(Operation.WRITE, DLQ_TOPIC, OPERATOR_TOPIC)
        # Describe every other topic of the layout (`pm topics check`; Read implies Describe),
        # each by name: an empty prefix must not turn into "every topic of the cluster".
        topics(
            Operation.DESCRIBE,
            *(t for t in layout.topics if t not in (JOURNAL_TOPIC, DLQ_TOPIC, OPERATOR_TOPIC)),
        )
        add(ResourceType.GROUP, prefix + _JOURNAL_READER_GROUPS, Operation.READ, PatternType.PREFIXED)
        add(ResourceType.GROUP, prefix + _OPS_GROUPS, Operation.READ, PatternType.PREFIXED)
        # Lag and membership of the components' groups (kafka-consumer-groups --describe).
        add(ResourceType.GROUP, prefix + _PM_GROUP, Operation.DESCRIBE)
        for step in steps:
            add(ResourceType.GROUP, f"{prefix}{_STEP_GROUP}{step}", Operation.DESCRIBE)
        # ... and of steps run together on one consumer (step-a+b), under this deployment's prefix only:
        # without one, a prefixed grant would reach other deployments' step groups.
        if prefix:
            add(ResourceType.GROUP, f"{prefix}{_STEP_GROUP}", Operation.DESCRIBE, PatternType.PREFIXED)
        add(ResourceType.CLUSTER, CLUSTER_NAME, Operation.DESCRIBE)
        idempotent_producer()  # for its pm.dlq writes
    else:
        raise AclError(f"unknown component {component!r}; one of {', '.join(component_names(layout))}")
    return grants


def acl_grants(
    config: Config,
    layout: TopicLayout | None = None,
    *,
    components: Sequence[str] | None = None,
    principals: Mapping[str, str] | None = None,
) -> dict[str, list[Grant]]:
    """Bindings per component (all components unless `components`), principals overridable."""
    layout = layout or load_layout()
    principals = principals or {}
    chosen = select_components(components, layout)
    return {c: component_grants(config, c, principals.get(c) or default_principal(c), layout) for c in chosen}


# ---------------------------------------------------------------- rendering


_RESOURCE_FLAG = {
    ResourceType.TOPIC: "--topic",
    ResourceType.GROUP: "--group",
    ResourceType.TRANSACTIONAL_ID: "--transactional-id",
}


def kafka_acls_line(grant: Grant, bootstrap: str, script: str = "kafka-acls.sh") -> str:
    """The `kafka-acls.sh --add` command that creates this binding."""
    parts = [
        script,
        "--bootstrap-server",
        bootstrap,
        "--add",
        "--allow-principal",
        grant.principal,
    ]
    if grant.host != "*":
        parts += ["--allow-host", grant.host]
    parts += ["--operation", grant.operation.value]
    if grant.resource_type is ResourceType.CLUSTER:
        parts.append("--cluster")
    else:
        parts += [_RESOURCE_FLAG[grant.resource_type], grant.name]
    if grant.pattern is PatternType.PREFIXED:
        parts += ["--resource-pattern-type", "prefixed"]
    return shlex.join(parts)


def render_kafka_acls(grants: Mapping[str, Sequence[Grant]], bootstrap: str) -> str:
    """Every binding as a kafka-acls.sh line, grouped by component under a comment header."""
    blocks: list[str] = []
    for component, rules in grants.items():
        principal = rules[0].principal if rules else default_principal(component)
        header = f"# {component} ({principal}): {describe_component(component)}"
        blocks.append("\n".join([header, *(kafka_acls_line(g, bootstrap) for g in rules)]))
    return "\n\n".join(blocks) + "\n"


def render_json(grants: Mapping[str, Sequence[Grant]]) -> str:
    """A JSON array of the bindings, one object each (component, principal, resource_type, ...)."""
    return json.dumps([g.to_json() for rules in grants.values() for g in rules], indent=2) + "\n"


_KAFKA_RESOURCE = {
    ResourceType.TOPIC: KafkaResourceType.TOPIC,
    ResourceType.GROUP: KafkaResourceType.GROUP,
    ResourceType.TRANSACTIONAL_ID: KafkaResourceType.TRANSACTIONAL_ID,
    # librdkafka calls it BROKER; it is resource type 4, which the protocol calls CLUSTER.
    ResourceType.CLUSTER: KafkaResourceType.BROKER,
}
_KAFKA_PATTERN = {
    PatternType.LITERAL: ResourcePatternType.LITERAL,
    PatternType.PREFIXED: ResourcePatternType.PREFIXED,
}
_KAFKA_OPERATION = {
    Operation.READ: AclOperation.READ,
    Operation.WRITE: AclOperation.WRITE,
    Operation.DESCRIBE: AclOperation.DESCRIBE,
    Operation.IDEMPOTENT_WRITE: AclOperation.IDEMPOTENT_WRITE,
}


def to_kafka_binding(grant: Grant) -> KafkaAclBinding:
    """The `confluent_kafka.admin.AclBinding` for `AdminClient.create_acls`."""
    return KafkaAclBinding(
        _KAFKA_RESOURCE[grant.resource_type],
        grant.name,
        _KAFKA_PATTERN[grant.pattern],
        grant.principal,
        grant.host,
        _KAFKA_OPERATION[grant.operation],
        AclPermissionType.ALLOW,
    )
