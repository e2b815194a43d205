"""topics.yaml: load it, create what is missing, verify what exists."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pm.config import Config
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
    "PM_INPUT_TOPICS",
]

STEP_TOPIC_PREFIX = "cmd."
PM_INPUT_TOPICS = ("email.received", "approvals", "step.results", "pm.timers")


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

    def spec(self, name: str) -> TopicSpec:
        return self.topics[name]


def default_layout_path() -> Path:
    """topics.yaml at the repository root (beside the package)."""
    return Path(__file__).resolve().parent.parent / "topics.yaml"


def load_layout(path: Path | None = None) -> TopicLayout:
    path = path or default_layout_path()
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
    return TopicLayout(topics=topics, co_partitioned=co)


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
