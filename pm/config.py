"""One configuration for every `pm` command.

Precedence, highest first: explicit overrides (CLI flags), environment variables
(`PM_*`), the config file (`PM_CONFIG`, else `./pm.yaml` when present), defaults.
librdkafka settings pass through untouched from the config file's `kafka:` map
and from `PM_KAFKA_<SETTING>` variables (`PM_KAFKA_SASL_MECHANISM=PLAIN` becomes
`sasl.mechanism=PLAIN`), so SASL/TLS need no code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pm.errors import PmError

__all__ = ["Config", "ConfigError", "load_config", "DEFAULT_PORT", "FETCH_WAIT_BY_BROKER"]

DEFAULT_PORT = 9092
# A consumer's fetch wait per broker kind. Apache Kafka answers a waiting fetch as soon as records
# arrive, so its default (500 ms) costs no latency and keeps idle fetches rare. Tansu answers only
# when the wait ends: the wait is added to every hop, and each idle fetch costs it ~1.5 ms of CPU
# plus ~0.1 ms per partition (bench/RESULTS.md); 50 ms is its compromise.
FETCH_WAIT_BY_BROKER = {"kafka": 500, "tansu": 50}
_KAFKA_ENV_PREFIX = "PM_KAFKA_"
_ENV_PREFIX = "PM_"
_NOT_SETTINGS = frozenset({"PM_CONFIG"})  # read by load_config itself


class ConfigError(PmError, ValueError):
    """A configuration value is missing or malformed; the message says which."""


@dataclass(frozen=True)
class Config:
    bootstrap: str = ""
    app: str = ""  # `module:attr` of the pm.App to run; empty: the bundled app
    topic_prefix: str = ""
    state_dir: Path = Path(".pm")
    instance_id: str = "pm-0"
    kafka: Mapping[str, str] = field(default_factory=dict)
    # Step side
    llm_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    openai_api_key: str = ""
    # The app's own settings (its services' URLs, credentials...): the config file's `settings:` map
    # and every other PM_<NAME> variable as `name`. The app reads and types them (see its settings).
    settings: Mapping[str, str] = field(default_factory=dict)
    # Approvals
    approval_keys: Mapping[str, str] = field(default_factory=dict)
    reviewers: tuple[str, ...] = ()
    # How long a consumer's fetch may wait for records; 0 = by broker kind (`fetch_wait_ms`).
    fetch_wait_max_ms: int = 0
    # "kafka" or "tansu"; "" = tansu when the bootstrap is the local broker `pm broker start` recorded.
    broker_kind: str = ""
    # The largest record pm produces or accepts: Apache Kafka's default (producer message.max.bytes).
    # An input larger goes to the DLQ; a decision whose outputs would be larger fails its process.
    max_record_bytes: int = 1_000_000
    # The PM's input partitions: "" = the consumer group assigns them (rebalances on join and leave);
    # "all" or a list like "0-2,5" = this instance takes exactly those, without a group join (a
    # restart resumes at once; two instances must never be given overlapping lists).
    partitions: str = ""
    # Worker processes that rebuild large missing stores beside the PM (`pm.runtime.rebuild`):
    # -1 = one per core but one, 0 = the PM folds every partition itself.
    rebuild_workers: int = -1

    def setting(self, name: str, default: str = "") -> str:
        """An app setting (`settings:` in the config file, or PM_<NAME>), else `default`."""
        return self.settings.get(name, default)

    def with_settings(self, **values: object) -> Config:
        """A copy with these app settings set (values as text, as the environment would give them)."""
        return replace(self, settings={**self.settings, **{k: str(v) for k, v in values.items()}})

    def static_partitions(self, count: int) -> list[int] | None:
        """The partition numbers of `partitions` among `count` (None: group-assigned); ConfigError if malformed."""
        spec = self.partitions.strip()
        if not spec:
            return None
        if spec == "all":
            return list(range(count))
        numbers: set[int] = set()
        for item in spec.split(","):
            low, sep, high = item.strip().partition("-")
            try:
                first, last = int(low), int(high if sep else low)
            except ValueError:
                raise ConfigError(f"setting 'partitions': {item.strip()!r} is not N or N-M (in {spec!r})") from None
            if not 0 <= first <= last < count:
                raise ConfigError(f"setting 'partitions': {item.strip()!r} is outside 0-{count - 1} (in {spec!r})")
            numbers.update(range(first, last + 1))
        return sorted(numbers)

    def topic(self, name: str) -> str:
        """The physical topic name for a logical one (`cmd.classify` -> `<prefix>cmd.classify`)."""
        return f"{self.topic_prefix}{name}"

    def logical_topic(self, physical: str) -> str:
        """Inverse of `topic`."""
        if self.topic_prefix and physical.startswith(self.topic_prefix):
            return physical[len(self.topic_prefix) :]
        return physical

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the non-None overrides applied (CLI flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def resolved_broker_kind(self) -> str:
        """`broker_kind`, else "tansu" for the local broker `pm broker start` recorded, else "kafka"."""
        if self.broker_kind:
            if self.broker_kind not in FETCH_WAIT_BY_BROKER:
                raise ConfigError(
                    f"setting 'broker_kind': {self.broker_kind!r}, expected one of {', '.join(FETCH_WAIT_BY_BROKER)}"
                )
            return self.broker_kind
        return "tansu" if self._recorded_bootstrap() == self.resolved_bootstrap else "kafka"

    @property
    def fetch_wait_ms(self) -> int:
        """`fetch_wait_max_ms`, else the default for the broker kind (FETCH_WAIT_BY_BROKER)."""
        return self.fetch_wait_max_ms or FETCH_WAIT_BY_BROKER[self.resolved_broker_kind]

    def _recorded_bootstrap(self) -> str | None:
        info = self.state_dir / "broker.json"
        if info.exists():
            try:
                return str(json.loads(info.read_text())["bootstrap"])
            except (ValueError, KeyError):
                pass
        return None

    @property
    def resolved_bootstrap(self) -> str:
        """Bootstrap servers; when unset, the local broker `pm broker start` recorded, else the default port."""
        return self.bootstrap or self._recorded_bootstrap() or f"127.0.0.1:{DEFAULT_PORT}"


_ENV_FIELDS: dict[str, str] = {
    "PM_BOOTSTRAP": "bootstrap",
    "PM_APP": "app",
    "PM_TOPIC_PREFIX": "topic_prefix",
    "PM_STATE_DIR": "state_dir",
    "PM_INSTANCE_ID": "instance_id",
    "PM_LLM_BASE_URL": "llm_base_url",
    "PM_LLM_MODEL": "llm_model",
    "OPENAI_API_KEY": "openai_api_key",
    "PM_APPROVAL_KEYS": "approval_keys",
    "PM_REVIEWERS": "reviewers",
    "PM_FETCH_WAIT_MAX_MS": "fetch_wait_max_ms",
    "PM_BROKER_KIND": "broker_kind",
    "PM_MAX_RECORD_BYTES": "max_record_bytes",
    "PM_PARTITIONS": "partitions",
    "PM_REBUILD_WORKERS": "rebuild_workers",
}


def _coerce(name: str, raw: Any) -> Any:
    """Turn a raw file/env value into the field's type, with an error naming the setting."""
    kinds = {f.name: f.type for f in fields(Config)}
    kind = str(kinds[name])
    try:
        if kind == "Path":
            return Path(str(raw))
        if kind == "int":
            return int(raw)
        if kind == "bool":
            return raw if isinstance(raw, bool) else str(raw).strip().lower() in {"1", "true", "yes", "on"}
        if name == "approval_keys":
            return _parse_keys(raw)
        if name == "reviewers":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(s.strip() for s in items if str(s).strip())
        if name in ("kafka", "settings"):
            return {str(k): str(v) for k, v in dict(raw).items() if v is not None}
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {raw!r}: {exc}") from exc


def _parse_keys(raw: Any) -> dict[str, str]:
    """`kid1:secret1,kid2:secret2` (env) or a mapping (file)."""
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    keys: dict[str, str] = {}
    for item in str(raw).split(","):
        if not item.strip():
            continue
        kid, sep, secret = item.partition(":")
        if not sep or not kid.strip() or not secret.strip():
            raise ValueError("expected KEY_ID:SECRET[,KEY_ID:SECRET...]")
        keys[kid.strip()] = secret.strip()
    return keys


def _file_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown settings {unknown}; known: {sorted(known)}. An app's own "
            "settings go under `settings:`"
        )
    return {k: _coerce(k, v) for k, v in data.items()}


def load_config(
    env: Mapping[str, str] | None = None, config_file: Path | None = None, **overrides: Any
) -> Config:
    """Build the configuration: overrides > environment > config file > defaults."""
    env = os.environ if env is None else env
    if config_file is None:
        named = env.get("PM_CONFIG")
        if named:
            config_file = Path(named)
        elif Path("pm.yaml").exists():
            config_file = Path("pm.yaml")
    values = _file_values(config_file)
    kafka = dict(values.get("kafka", {}))
    settings = dict(values.get("settings", {}))
    for key, value in env.items():
        if key in _ENV_FIELDS and value != "":
            values[_ENV_FIELDS[key]] = _coerce(_ENV_FIELDS[key], value)
        elif key.startswith(_KAFKA_ENV_PREFIX):
            kafka[key[len(_KAFKA_ENV_PREFIX) :].lower().replace("_", ".")] = value
        elif key.startswith(_ENV_PREFIX) and key not in _NOT_SETTINGS and key not in _ENV_FIELDS:
            settings[key[len(_ENV_PREFIX) :].lower()] = value
    values["kafka"] = kafka
    values["settings"] = settings
    return Config(**values).with_overrides(**overrides)
