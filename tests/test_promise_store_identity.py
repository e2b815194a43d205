"""A store built against a log that is gone is refused, and `--rebuild` rebuilds it from the new log.

The local broker keeps its log in memory: restarted, it has lost every topic and record, while the
PM's stores (RocksDB, on disk) still describe the old journal. Deciding on them would act on
processes the new log knows nothing of. pm/runtime/recovery.py has two independent checks:

- the journal's topic ID (KIP-516) recorded in the store differs from the recreated topic's;
- the anchor: the journal record the store folded last is not at its offset any more.

Each is shown failing on its own, on a broker of this module's own that is really restarted.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from promise_kit import keys_on_every_partition, quick_groups
from test_runtime_support import PmThread, email, publish, stages, wait_until

from pm.broker import LocalBroker, free_port, launch
from pm.config import Config
from pm.errors import PmError
from pm.harness import child_env, pm_argv
from pm.journal import iter_journal
from pm.runtime.recovery import journal_topic_id
from pm.store import PartitionStore, StoreError, list_store_paths
from pm.topics import apply_topics

REBUILD_HINT = "run `pm run pm --rebuild`"


@dataclass
class OldLog:
    """A store built on the first life of the broker, and the broker in its second life."""

    config: Config  # the broker's address and topics; state_dir: the old store (copy it, don't use it)
    old_topic_id: str
    new_topic_id: str
    old_processes: list[str]

    def state_copy(self, target: Path) -> Config:
        shutil.copytree(self.config.state_dir, target)
        return replace(self.config, state_dir=target)


@pytest.fixture(scope="module")
def old_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OldLog]:
    work = tmp_path_factory.mktemp("identity")
    port = free_port()
    broker: LocalBroker = launch(port, work / "broker.log")
    try:
        config = quick_groups(
            Config(
                bootstrap=broker.bootstrap,
                topic_prefix=f"i{uuid.uuid4().hex[:8]}.",
                state_dir=work / "old",
                fetch_wait_max_ms=10,
            )
        )
        apply_topics(config)
        old = keys_on_every_partition("old")  # one process, so one anchor, in every partition store
        with PmThread(config):
            publish(config, [email(c) for c in old])
            wait_until(lambda: all(stages(config).get(c) == "classifying" for c in old))
        old_id = journal_topic_id(config)
        # The restart: same address, empty memory. The topics are created again as an operator would.
        broker.stop()
        broker = launch(port, work / "broker.log")
        apply_topics(config)
        new_id = journal_topic_id(config)
        assert old_id is not None and new_id is not None, "the local broker reports topic IDs"
        yield OldLog(config, old_id, new_id, old)
    finally:
        broker.stop()


def test_topic_id_of_a_recreated_journal_refuses_the_store(old_log: OldLog, tmp_path: Path) -> None:
    config = old_log.state_copy(tmp_path / "state")
    assert old_log.old_topic_id != old_log.new_topic_id
    why = f"topic ID {old_log.old_topic_id} recorded, the journal topic now has {old_log.new_topic_id}"

    # As a user meets it: `pm run pm` refuses, says what to do, and exits 2 (not restarted).
    env = child_env(config, **{f"PM_KAFKA_{k.upper().replace('.', '_')}": v for k, v in config.kafka.items()})
    run = subprocess.run(
        pm_argv("run", "pm"),
        env={**env, "OTEL_SDK_DISABLED": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr[-2000:]  # a PmError (StoreError), permanent
    assert why in run.stderr and REBUILD_HINT in run.stderr

    # --rebuild folds the new (empty) journal instead; the PM then works on the new log.
    log = io.StringIO()
    fresh = "<after-rebuild@x>"
    with PmThread(config, rebuild=True, log=log):
        assert stages(config) == {}  # nothing of the old log survives
        publish(config, [email(fresh)])
        wait_until(lambda: stages(config).get(fresh) == "classifying")
    assert "rebuilding store" in log.getvalue() and why in log.getvalue()
    assert _identities(config) == {old_log.new_topic_id}


def test_anchor_not_in_the_new_log_refuses_the_store(old_log: OldLog, tmp_path: Path) -> None:
    # The new log is not empty: other traffic has filled every journal partition past the offsets the
    # old store folded, so "the offset exists" proves nothing; the event at that offset must match.
    filler = replace(old_log.config, state_dir=tmp_path / "filler")
    new = keys_on_every_partition("new-a") + keys_on_every_partition("new-b")
    with PmThread(filler):
        publish(filler, [email(c) for c in new])
        wait_until(lambda: all(stages(filler).get(c) == "classifying" for c in new))

    config = old_log.state_copy(tmp_path / "state")
    # Make the topic ID agree (as from a broker that kept or reused it): only the anchor can tell now.
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition)
        try:
            store.set_identity({"topic": config.topic("pm.journal"), "topic_id": old_log.new_topic_id})
        finally:
            store.close()

    with pytest.raises(StoreError, match="--rebuild") as refused, PmThread(config):
        pass
    message = str(refused.value)
    assert isinstance(refused.value, PmError) and REBUILD_HINT in message and "topic ID" not in message
    assert "journal offset" in message and "the store expected" in message  # another event at the offset

    log = io.StringIO()
    with PmThread(config, rebuild=True, log=log):
        pass
    assert "rebuilding store" in log.getvalue()
    # Rebuilt from the new journal: its processes, none of the old store's.
    in_new_log = {r.entry.correlation_id for r in iter_journal(config, idle_timeout=10)}
    assert set(new) <= in_new_log and set(stages(config)) == in_new_log
    assert not set(old_log.old_processes) & in_new_log


def _identities(config: Config) -> set[str | None]:
    found: set[str | None] = set()
    for partition, path in list_store_paths(config):
        store = PartitionStore(path, partition, read_only=True)
        try:
            found.add((store.identity or {}).get("topic_id"))
        finally:
            store.close()
    return found
