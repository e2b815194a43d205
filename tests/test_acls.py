"""`pm.acls` and `pm acls`: who may write what, derived from the names the code really uses."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType
from confluent_kafka.admin import ResourceType as KafkaResourceType

from customer_email.events import STEPS
from pm import journal, replay, review
from pm.acls import (
    OPS,
    PM,
    REVIEW,
    UPSTREAM,
    AclError,
    Grant,
    Operation,
    PatternType,
    ResourceType,
    acl_grants,
    component_names,
    default_principal,
    kafka_acls_line,
    parse_principal_overrides,
    select_components,
    to_kafka_binding,
)
from pm.cli import main
from pm.commands.acls import _child_failure, _refusal
from pm.config import Config
from pm.events import Event
from pm.topics import load_layout

LAYOUT = load_layout()
PREFIX = "acme."
CONFIG = Config(bootstrap="kafka:9092", topic_prefix=PREFIX)
STEP_COMPONENTS = tuple(f"step:{s}" for s in STEPS)


def all_grants(config: Config = CONFIG, **kwargs: Any) -> list[Grant]:
    return [g for rules in acl_grants(config, LAYOUT, **kwargs).values() for g in rules]


def allows(grants: Iterable[Grant], principal: str, kind: ResourceType, name: str, op: Operation) -> bool:
    """Kafka's own matching: literal name or `*`, or a prefix; Read and Write imply Describe."""
    implied = {op, Operation.READ, Operation.WRITE} if op is Operation.DESCRIBE else {op}
    for g in grants:
        if g.principal != principal or g.resource_type is not kind or g.operation not in implied:
            continue
        if g.pattern is PatternType.PREFIXED and name.startswith(g.name):
            return True
        if g.pattern is PatternType.LITERAL and g.name in (name, "*"):
            return True
    return False


def components_allowed(op: Operation, logical_topic: str, config: Config = CONFIG) -> set[str]:
    grants = all_grants(config)
    return {
        c
        for c in component_names(LAYOUT)
        if allows(grants, default_principal(c), ResourceType.TOPIC, config.topic(logical_topic), op)
    }


# ---------------------------------------------------------------- the separation rules


def test_components_are_derived_from_topics_yaml() -> None:
    assert component_names(LAYOUT) == (PM, *STEP_COMPONENTS, REVIEW, UPSTREAM, OPS)


@pytest.mark.parametrize(
    ("logical", "writers"),
    [
        ("step.results", set(STEP_COMPONENTS)),
        ("approvals", {REVIEW}),
        ("pm.journal", {PM}),
        ("pm.timers", {PM}),
        ("approvals.requested", {PM}),
        ("email.received", {UPSTREAM}),
        *((f"cmd.{s}", {PM}) for s in STEPS),
        ("pm.dlq", {PM, *STEP_COMPONENTS, REVIEW, UPSTREAM, OPS}),
    ],
)
def test_only_these_components_write(logical: str, writers: set[str]) -> None:
    assert components_allowed(Operation.WRITE, logical) == writers


@pytest.mark.parametrize(
    ("logical", "readers"),
    [
        ("email.received", {PM}),
        ("step.results", {PM}),
        ("approvals", {PM, REVIEW}),
        ("pm.timers", {PM}),
        ("pm.journal", {PM, OPS}),
        ("approvals.requested", {REVIEW}),
        ("pm.dlq", {OPS}),
        *((f"cmd.{s}", {f"step:{s}"}) for s in STEPS),
    ],
)
def test_only_these_components_read(logical: str, readers: set[str]) -> None:
    assert components_allowed(Operation.READ, logical) == readers


def test_every_topic_grant_is_literal_and_prefixed() -> None:
    topic_grants = [g for g in all_grants() if g.resource_type is ResourceType.TOPIC]
    physical = {CONFIG.topic(t) for t in LAYOUT.topics}
    assert topic_grants and all(g.pattern is PatternType.LITERAL for g in topic_grants)
    assert {g.name for g in topic_grants} <= physical
    assert all(g.permission == "allow" and g.host == "*" for g in all_grants())


def test_prefix_applies_to_groups_and_transactional_ids() -> None:
    grants = acl_grants(CONFIG, LAYOUT)
    pm_names = {(g.resource_type, g.name, g.pattern) for g in grants[PM]}
    assert (ResourceType.GROUP, "acme.pm", PatternType.LITERAL) in pm_names
    assert (ResourceType.TRANSACTIONAL_ID, "pm-acme.", PatternType.PREFIXED) in pm_names
    assert (ResourceType.GROUP, "acme.step-classify", PatternType.LITERAL) in {
        (g.resource_type, g.name, g.pattern) for g in grants["step:classify"]
    }
    # Without a prefix, no prefixed pattern is empty (that would match every resource).
    bare = all_grants(Config())
    assert all(g.name for g in bare if g.pattern is PatternType.PREFIXED)
    assert "email.received" in {g.name for g in bare}


def test_only_the_pm_has_a_transactional_id_and_steps_have_their_own_group() -> None:
    grants = all_grants()
    assert {g.component for g in grants if g.resource_type is ResourceType.TRANSACTIONAL_ID} == {PM}
    for step in STEPS:
        assert allows(grants, f"User:pm-step-{step}", ResourceType.GROUP, f"acme.step-{step}", Operation.READ)
        others = [s for s in STEPS if s != step]
        assert not any(
            allows(grants, f"User:pm-step-{step}", ResourceType.GROUP, f"acme.step-{o}", Operation.READ)
            for o in others
        )


def test_principal_overrides() -> None:
    overrides = parse_principal_overrides(["step:classify=User:llm-worker", "pm=User:CN=pm,O=acme"], LAYOUT)
    grants = acl_grants(CONFIG, LAYOUT, principals=overrides)
    assert {g.principal for g in grants["step:classify"]} == {"User:llm-worker"}
    assert {g.principal for g in grants[PM]} == {"User:CN=pm,O=acme"}  # only the first "=" splits
    assert {g.principal for g in grants["step:send-email"]} == {"User:pm-step-send-email"}
    for bad in ("nobody=User:x", "pm", "pm=pm-manager", "pm=User:"):
        with pytest.raises(AclError):
            parse_principal_overrides([bad], LAYOUT)


def test_component_selection() -> None:
    assert select_components(["step"], LAYOUT) == STEP_COMPONENTS
    assert select_components(["ops", "classify", "pm"], LAYOUT) == (PM, "step:classify", OPS)
    with pytest.raises(AclError):
        select_components(["nobody"], LAYOUT)


# ---------------------------------------------------------------- the names match the code


class _Captured(Exception):
    pass


def _capture_group(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    groups: list[str] = []

    def fake(config: Config, role: str, group_id: str, **extra: Any) -> Any:
        groups.append(group_id)
        raise _Captured

    monkeypatch.setattr(module, "make_consumer", fake)
    return groups


def test_pm_identities_match_the_runtime() -> None:
    from pm.runtime import ProcessManager

    for config in (CONFIG, replace(CONFIG, instance_id="pm-7"), Config()):
        manager = ProcessManager(config)
        grants = all_grants(config)
        principal = default_principal(PM)
        assert allows(grants, principal, ResourceType.GROUP, manager.group_id, Operation.READ)
        assert allows(
            grants, principal, ResourceType.TRANSACTIONAL_ID, manager.transactional_id, Operation.WRITE
        )


class _Handler:
    """A step handler that only names its step (the ACL tests build consumers, never run them)."""

    def __init__(self, step: str) -> None:
        self.step = step

    def handle(self, command: Event, now: datetime) -> Event:
        raise NotImplementedError


def test_step_groups_match_the_step_consumers() -> None:
    from customer_email.events import Step
    from pm.steps.consumer import StepConsumer

    grants = all_grants()
    for step in Step:
        consumer = StepConsumer(CONFIG, _Handler(step))
        principal = default_principal(f"step:{step.value}")
        assert allows(grants, principal, ResourceType.GROUP, consumer.group_id, Operation.READ)
        assert allows(grants, principal, ResourceType.TOPIC, consumer.topic, Operation.READ)
        assert allows(grants, principal, ResourceType.TOPIC, consumer.results_topic, Operation.WRITE)
        assert allows(grants, principal, ResourceType.TOPIC, consumer.dlq_topic, Operation.WRITE)


def test_journal_reader_and_review_groups_match_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    journal_groups = _capture_group(monkeypatch, journal)
    for call in (
        lambda: journal.journal_partitions(CONFIG),
        lambda: next(iter(journal.iter_journal(CONFIG, [0]))),
    ):
        with pytest.raises(_Captured):
            call()
    estimate_groups = _capture_group(monkeypatch, replay)
    with pytest.raises(_Captured):
        replay.journal_size_estimate(CONFIG)
    review_groups = _capture_group(monkeypatch, review)
    with pytest.raises(_Captured):
        review.ReviewClient(CONFIG).pending()
    assert len(journal_groups) == 2 and len(estimate_groups) == 1 and len(review_groups) == 1

    grants = all_grants()
    for group in journal_groups:
        assert allows(grants, default_principal(PM), ResourceType.GROUP, group, Operation.READ)
    for group in journal_groups + estimate_groups:
        assert allows(grants, default_principal(OPS), ResourceType.GROUP, group, Operation.READ)
    assert allows(grants, default_principal(REVIEW), ResourceType.GROUP, review_groups[0], Operation.READ)


# ---------------------------------------------------------------- rendering


def test_kafka_acls_lines() -> None:
    by_kind: dict[tuple[str, ResourceType, PatternType], Grant] = {}
    for g in all_grants():
        by_kind.setdefault((g.component, g.resource_type, g.pattern), g)  # the first of each kind
    topic = by_kind[(UPSTREAM, ResourceType.TOPIC, PatternType.LITERAL)]
    assert kafka_acls_line(topic, "kafka:9092") == (
        "kafka-acls.sh --bootstrap-server kafka:9092 --add --allow-principal User:pm-upstream "
        "--operation Write --topic acme.email.received"
    )
    group = by_kind[(REVIEW, ResourceType.GROUP, PatternType.PREFIXED)]
    assert kafka_acls_line(group, "b:1").endswith(
        "--operation Read --group pm-review- --resource-pattern-type prefixed"
    )
    txn = by_kind[(PM, ResourceType.TRANSACTIONAL_ID, PatternType.PREFIXED)]
    assert kafka_acls_line(txn, "b:1").endswith(
        "--operation Write --transactional-id pm-acme. --resource-pattern-type prefixed"
    )
    cluster = by_kind[(PM, ResourceType.CLUSTER, PatternType.LITERAL)]
    assert kafka_acls_line(cluster, "b:1").endswith("--operation IdempotentWrite --cluster")
    odd = replace(topic, principal="User:CN=a b")
    assert "--allow-principal 'User:CN=a b'" in kafka_acls_line(odd, "b:1")


def test_admin_bindings() -> None:
    grants = all_grants()
    bindings = [to_kafka_binding(g) for g in grants]
    assert len(set(bindings)) == len(grants)  # create_acls refuses duplicates
    cluster = [b for b, g in zip(bindings, grants, strict=True) if g.resource_type is ResourceType.CLUSTER]
    assert cluster and all(
        b.restype is KafkaResourceType.BROKER and b.name == "kafka-cluster" for b in cluster
    )
    txn = next(b for b in bindings if b.restype is KafkaResourceType.TRANSACTIONAL_ID)
    assert txn.resource_pattern_type is ResourcePatternType.PREFIXED and txn.operation is AclOperation.WRITE
    assert Grant.from_json(grants[0].to_json()) == grants[0]


def test_cli_prints_kafka_acls_lines_grouped_by_component(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["acls", "--bootstrap", "kafka:9092", "--prefix", PREFIX])
    out = capsys.readouterr().out
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("# ")]
    assert [h.split()[1] for h in headers] == list(component_names(LAYOUT))
    assert "# pm (User:pm-manager): the process manager" in out
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(all_grants())
    assert all(line.startswith("kafka-acls.sh --bootstrap-server kafka:9092 --add ") for line in lines)


def test_cli_json_selection_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["acls", "--format", "json", "--component", "review", "--principal", "review=User:desk"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert (
        rows
        and {r["component"] for r in rows} == {REVIEW}
        and {r["principal"] for r in rows} == {"User:desk"}
    )
    assert main(["acls", "--component", "nobody"]) == 2
    assert "unknown component 'nobody'" in capsys.readouterr().err


# ---------------------------------------------------------------- applying


def test_apply_on_the_local_broker_fails_clearly(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    # Tansu advertises CreateAcls but answers without results; librdkafka aborts on that answer,
    # which is why `--apply` runs create_acls in a child process.
    code = main(["acls", "--apply", "--bootstrap", config.bootstrap, "--prefix", config.topic_prefix])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pm: error: the broker refused ACLs: ")
    assert "the local broker does not enforce ACLs; apply them on Apache Kafka with an authorizer" in err
    assert "Traceback" not in err


def test_refusal_messages_name_the_fix() -> None:
    grant = all_grants()[0]
    disabled = _refusal([(grant, "SECURITY_DISABLED: No Authorizer is configured on the broker")], 3)
    assert disabled.startswith("the broker refused ACLs: 1 of 3 not created: SECURITY_DISABLED")
    assert "StandardAuthorizer" in disabled
    denied = _refusal([(grant, "CLUSTER_AUTHORIZATION_FAILED: Cluster authorization failed")], 1)
    assert "Alter on the cluster" in denied
    assert _refusal([(grant, "_TIMED_OUT: Failed while waiting")], 1).startswith("could not reach the broker")
    assert "signal 6" in _child_failure(-6, "", 5)
    assert _child_failure(1, "Traceback...\nImportError: boom\n", 5).endswith("(ImportError: boom)")


def test_steps_together_have_one_component_with_their_group() -> None:
    from customer_email.events import Step
    from pm.steps.consumer import StepConsumer

    assert select_components(["fetch-order+classify", "pm"], LAYOUT) == (PM, "step:classify+fetch-order")
    grants = all_grants(components=["step:fetch-order+classify"])
    consumer = StepConsumer(CONFIG, [_Handler(Step.FETCH_ORDER), _Handler(Step.CLASSIFY)])
    principal = default_principal("step:classify+fetch-order")
    assert allows(grants, principal, ResourceType.GROUP, consumer.group_id, Operation.READ)
    for topic in consumer.topics:
        assert allows(grants, principal, ResourceType.TOPIC, topic, Operation.READ)
    assert not allows(grants, principal, ResourceType.TOPIC, CONFIG.topic("cmd.send-email"), Operation.READ)
    assert not allows(grants, principal, ResourceType.GROUP, f"{CONFIG.topic_prefix}step-classify", Operation.READ)
    ops = all_grants(components=["ops"])
    assert allows(ops, default_principal("ops"), ResourceType.GROUP, consumer.group_id, Operation.DESCRIBE)
    with pytest.raises(AclError):
        select_components(["classify+nope"], LAYOUT)
    assert parse_principal_overrides(["classify+fetch-order=User:light"], LAYOUT) == {
        "step:classify+fetch-order": "User:light"
    }
