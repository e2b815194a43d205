"""The topic layout: topics.yaml plus the topics an app derives; create what is missing, verify what exists.

topics.yaml holds the core topics (journal, timers, approvals, results, DLQ), a `defaults`
entry, and overrides (partitions, configs) for any app topic. An app adds its start topics
(co-partitioned with the PM inputs and the journal) and one `cmd.<step>` per step; a topic
topics.yaml does not name gets the defaults (start topics: the co-partitioned count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pm.config import Config

if TYPE_CHECKING:
    from pm.app import App
from pm.errors import PmError
from pm.kafka import make_admin

__all__ = [
    "TopicSpec",
    "TopicLayout",
    "TopicError",
    "load_layout",
    "apply_topics",
    "check_topics",
    "default_layout_path",
    "STEP_TOPIC_PREFIX",
    "CORE_TOPICS",
    "step_set_name",
]

STEP_TOPIC_PREFIX = "cmd."


def step_set_name(steps: Iterable[str]) -> str:
    """The name of the steps one step consumer runs: `a`, or `a+b` (sorted) for several.

    It names the consumer's group (`<prefix>step-<name>`), its ACL component (`step:<name>`) and its
    process; one definition, so that a group and the grant for it always agree.
    """
    return "+".join(sorted(steps))
# Topics of the core, whatever the app: created from topics.yaml for every app.
CORE_TOPICS = (
    "pm.journal",
    "pm.timers",
    "pm.operator",
    "pm.dlq",
    "approvals",
    "approvals.requested",
    "step.results",
)


class TopicError(PmError, RuntimeError):
    """topics.yaml is malformed, or the broker's topics do not match it."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicLayout:
    topics: Mapping[str, TopicSpec]
    co_partitioned: tuple[str, ...]
    default: TopicSpec = TopicSpec("default", 6, 1)  # for app topics topics.yaml does not name

    def spec(self, name: str) -> TopicSpec:
        return self.topics[name]


def default_layout_path() -> Path:
    """topics.yaml at the repository root (beside the package)."""
    return Path(__file__).resolve().parent.parent / "topics.yaml"


def load_layout(path: Path | None = None, app: App | None = None) -> TopicLayout:
    """topics.yaml (`path`, default the repository's); with `app`, only the core topics and the app's own."""
    layout = _read_layout(path or default_layout_path())
    return layout if app is None else _for_app(layout, app)


def _for_app(layout: TopicLayout, app: App) -> TopicLayout:
    co_count = layout.topics[layout.co_partitioned[0]].partitions if layout.co_partitioned else 1
    wanted = {**{t: co_count for t in app.input_topics}, **{s.topic: layout.default.partitions for s in app.steps}}
    topics = {name: spec for name, spec in layout.topics.items() if name in CORE_TOPICS}
    for name, partitions in wanted.items():
        base = layout.topics.get(name) or TopicSpec(
            name, partitions, layout.default.replication_factor, dict(layout.default.config)
        )
        options: Mapping[str, Any] = app.topic_options.get(name, {})
        topics[name] = TopicSpec(
            name=name,
            partitions=int(options.get("partitions", base.partitions)),
            replication_factor=int(options.get("replication_factor", base.replication_factor)),
            config={**base.config, **{str(k): str(v) for k, v in dict(options.get("config", {})).items()}},
        )
    co = tuple(dict.fromkeys((*app.input_topics, *(t for t in layout.co_partitioned if t in CORE_TOPICS))))
    counts = {topics[t].partitions for t in co}
    if len(counts) > 1:
        detail = ", ".join(f"{t}={topics[t].partitions}" for t in co)
        raise TopicError(f"app {app.name!r}: PM inputs and the journal must share one partition count ({detail})")
    return TopicLayout(topics=topics, co_partitioned=co, default=layout.default)


def _read_layout(path: Path) -> TopicLayout:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopicError(f"cannot read {path}: {exc}") from exc
    try:
        rf = int(data.get("replication_factor", 1))
        topics = {
            name: TopicSpec(
                name=name,
                partitions=int(body["partitions"]),
                replication_factor=int(body.get("replication_factor", rf)),
                config={str(k): str(v) for k, v in (body.get("config") or {}).items()},
            )
            for name, body in data["topics"].items()
        }
        co = tuple(data.get("co_partitioned", ()))
        fallback = data.get("defaults") or {}
        default = TopicSpec(
            name="default",
            partitions=int(fallback.get("partitions", 6)),
            replication_factor=int(fallback.get("replication_factor", rf)),
            config={str(k): str(v) for k, v in (fallback.get("config") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TopicError(f"{path}: malformed ({exc!r}); each topic needs `partitions`") from exc
    missing = [t for t in co if t not in topics]
    if missing:
        raise TopicError(f"{path}: co_partitioned names unknown topics {missing}")
    counts = {topics[t].partitions for t in co}
    if len(counts) > 1:
        raise TopicError(
            f"{path}: co_partitioned topics must share one partition count, found {sorted(counts)}"
        )
    return TopicLayout(topics=topics, co_partitioned=co, default=default)


def _existing(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    metadata = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def apply_topics(config: Config, layout: TopicLayout | None = None) -> list[str]:
    """Create every topic of the layout that does not exist yet; return the physical names created."""
    layout = layout or load_layout()
    admin = make_admin(config, "topics")
    existing = _existing(admin)
    wanted = [
        NewTopic(
            config.topic(spec.name),
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in layout.topics.values()
        if config.topic(spec.name) not in existing
    ]
    if not wanted:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(wanted, request_timeout=15).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):  # a concurrent apply won the race: fine
                continue
            raise TopicError(f"creating topic {name}: {exc}") from exc
    return sorted(created)


def check_topics(config: Config, layout: TopicLayout | None = None) -> list[str]:
    """Problems with the broker's topics, each naming the topic and the fix; empty when all is well."""
    layout = layout or load_layout()
    existing = _existing(make_admin(config, "topics"))
    problems: list[str] = []
    for spec in layout.topics.values():
        physical = config.topic(spec.name)
        if physical not in existing:
            problems.append(f"topic {physical} is missing: run `pm topics apply`")
        elif existing[physical] != spec.partitions:
            problems.append(
                f"topic {physical} has {existing[physical]} partitions, topics.yaml says {spec.partitions}: "
                "recreate it with the right count (partitions cannot be re-keyed in place)"
            )
    group = [config.topic(t) for t in layout.co_partitioned if config.topic(t) in existing]
    counts = {t: existing[t] for t in group}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
        problems.append(
            f"PM inputs and the journal are not co-partitioned ({detail}): every one of them must have "
            "the same partition count so partition p of each belongs to the same PM instance"
        )
    return problems
