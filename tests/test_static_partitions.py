"""Static partitions (`--partitions`, PM_PARTITIONS): no group join, same promises as a group member.

A restart resumes from the committed offsets without a join (`pm bench recovery` times it), a kill -9
mid-run loses and duplicates nothing, two instances can split the partitions, and a second
instance given the same partitions fences the first (the transactional.id names them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_runtime_recovery import check_journal, kill_through_waves, records, stage_count
from test_runtime_support import PmThread, email, expected_states, publish, wait_until

from pm.config import Config, ConfigError
from pm.runtime.checkpoint import FencedError


def test_partition_lists_parse_and_bad_ones_are_refused() -> None:
    assert Config().static_partitions(6) is None
    assert Config(partitions="all").static_partitions(6) == [0, 1, 2, 3, 4, 5]
    assert Config(partitions=" 0-2, 5,1 ").static_partitions(6) == [0, 1, 2, 5]
    for bad, why in (("6", "outside 0-5"), ("3-1", "outside"), ("x", "not N or N-M"), ("1,,2", "not N")):
        with pytest.raises(ConfigError, match=why):
            Config(partitions=bad).static_partitions(6)


def test_kill_minus_9_with_static_partitions_loses_and_duplicates_nothing(topics: Config, tmp_path: Path) -> None:
    config = replace(topics, partitions="all")
    pm, inputs = kill_through_waves(config, tmp_path, "p", 300)
    assert "stopped" in pm.stop()
    final = {cid: (d["status"], d["state"]["stage"]) for cid, d in records([config]).items()}
    assert final == expected_states(inputs)
    check_journal(config, inputs)


def test_two_instances_split_the_partitions(topics: Config, tmp_path: Path) -> None:
    halves = [
        replace(topics, partitions=spec, instance_id=f"pm-{i}", state_dir=tmp_path / f"pm-{i}")
        for i, spec in enumerate(("0-2", "3-5"))
    ]
    cids = [f"<h{i}@mail.example>" for i in range(60)]
    with PmThread(halves[0]) as first, PmThread(halves[1]) as second:
        publish(topics, [email(c) for c in cids])
        wait_until(lambda: stage_count(halves, "classifying") == len(cids), timeout=30)
        assert first.manager is not None and second.manager is not None
        assert sorted(first.manager.stores) == [0, 1, 2] and sorted(second.manager.stores) == [3, 4, 5]
        assert first.manager.stats.handled > 0 and second.manager.stats.handled > 0
    check_journal(topics, [email(c) for c in cids])


def test_a_second_instance_with_the_same_partitions_fences_the_first(topics: Config, tmp_path: Path) -> None:
    one = replace(topics, partitions="all", instance_id="pm-a", state_dir=tmp_path / "a")
    # The same set spelled another way: the transactional.id names the set, so it still fences.
    two = replace(topics, partitions="0-2,3-5", instance_id="pm-b", state_dir=tmp_path / "b")
    with PmThread(one) as first:
        with PmThread(two) as second:
            publish(topics, [email("<f1@mail.example>")])
            wait_until(lambda: stage_count([two], "classifying") == 1, timeout=30)
            # The first instance's producer is fenced: its next transaction fails and it stops.
            publish(topics, [email("<f2@mail.example>")])
            wait_until(lambda: first.error is not None, timeout=30)
            assert isinstance(first.error, FencedError), repr(first.error)
            wait_until(lambda: stage_count([two], "classifying") == 2, timeout=30)
            assert second.error is None
            assert second.manager is not None and second.manager.stats.handled == 2
        first.error = None  # seen; close() would re-raise it
    # Not check_journal: the fenced instance's records of its aborted transaction may reach the log,
    # and the local broker shows those to read_committed readers (Kafka does not; tansu.md).
    assert {cid: d["status"] for cid, d in records([two]).items()} == {
        "<f1@mail.example>": "running",
        "<f2@mail.example>": "running",
    }
