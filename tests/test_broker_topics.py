"""The local broker and topics.yaml against the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm.broker import BrokerError, broker_status, free_port, start_broker, stop_broker
from pm.cli import main
from pm.config import Config
from pm.kafka import make_admin
from pm.topics import apply_topics, check_topics, load_layout


def test_layout_co_partitions_pm_inputs_and_journal() -> None:
    layout = load_layout()
    assert set(layout.co_partitioned) == {
        "email.received",
        "approvals",
        "step.results",
        "pm.timers",
        "pm.operator",
        "pm.journal",
    }
    assert {layout.spec(t).partitions for t in layout.co_partitioned} == {6}
    assert layout.spec("pm.journal").config["retention.ms"] == "-1"


def test_apply_is_idempotent_and_check_passes(config: Config) -> None:
    created = apply_topics(config)
    assert len(created) == len(load_layout().topics)
    assert apply_topics(config) == []
    assert check_topics(config) == []


def test_check_names_a_mismatched_topic(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    from confluent_kafka.admin import NewTopic

    admin = make_admin(config)
    admin.create_topics([NewTopic(config.topic("step.results"), num_partitions=2, replication_factor=1)])[
        config.topic("step.results")
    ].result()
    apply_topics(config)
    problems = check_topics(config)
    assert any(config.topic("step.results") in p and "2 partitions" in p for p in problems)
    assert any("not co-partitioned" in p for p in problems)
    code = main(["topics", "check", "--bootstrap", config.bootstrap, "--prefix", config.topic_prefix])
    assert code == 1
    assert "step.results has 2 partitions" in capsys.readouterr().out


def test_broker_start_twice_is_refused_and_stop_kills_that_pid(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, free_port())
    try:
        assert broker_status(tmp_path) == broker
        with pytest.raises(BrokerError, match="already running"):
            start_broker(tmp_path, free_port())
    finally:
        stopped = stop_broker(tmp_path)
    assert stopped is not None and stopped.pid == broker.pid
    assert not broker.alive()
    assert broker_status(tmp_path) is None
