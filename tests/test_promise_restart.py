"""After a clean restart the PM handles no input a second time.

The input offsets are committed in the same transaction as the journal entries (pm/runtime/
checkpoint.py, `send_offsets_to_transaction`), so a PM stopped and started again on the same state
directory resumes exactly past what it journaled: no input comes back, not even as a duplicate the
dedupe would catch. Shown twice: the consumer group's committed offsets equal the end of every input
partition, and the restarted PM's counters show only the new inputs after it has consumed, on every
partition of every input topic, a probe that comes after everything the first run saw.

Group membership is not under test: `quick_groups` makes each start join in ~1 s instead of ~7 s;
the offsets a group commits do not depend on it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from promise_kit import OffsetCheck, keys_on_every_partition, quick_groups
from test_runtime_support import PmThread, classified, email, publish, sent, stages, wait_until

from customer_email.app import APP
from pm.config import Config
from pm.events import ApprovalDecided, ApprovalDecidedPayload, derive_id
from pm.journal import iter_journal
from pm.runtime import ProcessManager

INPUTS = list(APP.input_topics)  # the PM's inputs: the app's start topic and the core ones


def decided(cid: str) -> ApprovalDecided:
    """A decision the tiny test process does not expect: journaled as rejected (an `approvals` input)."""
    now = datetime.now(UTC)
    return ApprovalDecided(
        event_id=derive_id(cid, "decision"),
        correlation_id=cid,
        occurred_at=now,
        payload=ApprovalDecidedPayload(
            approval_id="a1",
            decision="approve",
            reviewer="alice",
            draft_hash="0" * 64,
            policy_version="v1",
            decided_at=now,
        ),
    )


def settled(manager: ProcessManager | None, handled: int, duplicates: int = 0, dlq: int = 0) -> bool:
    s = manager.stats if manager is not None else None
    return s is not None and (s.handled, s.duplicates, s.dlq) == (handled, duplicates, dlq)


def test_a_clean_restart_re_handles_no_input(topics: Config) -> None:
    config = quick_groups(topics)
    done = [f"<done-{i}@x>" for i in range(3)]
    timed_out, waiting = "<timed-out@x>", "<waiting@x>"

    # First run: every input topic gets records, and the processes end terminal or waiting.
    with PmThread(config) as first:
        publish(config, [("email.received", done[0], b"\x00poison")])  # dead-lettered, offset committed
        publish(config, [email(c) for c in done] + [email(timed_out, "fast-timer"), email(waiting)])
        wait_until(lambda: all(stages(config).get(c) == "classifying" for c in [*done, waiting]))
        publish(config, [classified(c) for c in done] + [decided(waiting), email(done[0])])  # + a duplicate
        wait_until(lambda: all(stages(config).get(c) == "sending" for c in done))
        publish(config, [sent(c) for c in done])
        # 3 x 3 for `done`, e-mail + TimerFired for `timed_out`, e-mail + decision for `waiting`.
        wait_until(lambda: settled(first.manager, handled=13, duplicates=1, dlq=1), timeout=30)
    assert {c: stages(config)[c] for c in [*done, timed_out, waiting]} == {
        **{c: "done" for c in done},
        timed_out: "timed-out",
        waiting: "classifying",
    }

    # Where a restarted member of the group starts: the end of every input partition.
    group = f"{config.topic_prefix}pm"
    before = OffsetCheck.of(config, group, INPUTS)
    assert before.behind() == {}
    used = {topic for (topic, _p), end in before.ends.items() if end > 0}
    assert used == {"email.received", "step.results", "pm.timers", "approvals"}

    # Second run on the same state directory. A probe on every partition of every input topic that
    # the first run used comes after all of its records there: once the probes are handled, anything
    # the restart re-read would have been counted first (handled, duplicate or dead-lettered).
    plain, timers = keys_on_every_partition("probe"), keys_on_every_partition("probe-timer")
    probes = 3 * len(plain) + 2 * len(timers)
    with PmThread(config) as second:
        publish(config, [email(c) for c in plain] + [email(c, "fast-timer") for c in timers])
        wait_until(lambda: all(stages(config).get(c) == "classifying" for c in plain))
        publish(config, [classified(c) for c in plain] + [decided(c) for c in plain])
        wait_until(lambda: settled(second.manager, handled=probes) or _counted_more(second.manager, probes))
        assert second.manager is not None
        stats = second.manager.stats
        assert (stats.handled, stats.duplicates, stats.dlq, stats.reemitted) == (probes, 0, 0, 0)
    assert all(stages(config)[c] == "timed-out" for c in timers)

    after = OffsetCheck.of(config, group, INPUTS)
    assert after.behind() == {}
    # The journal holds each input once: nothing was decided twice across the restart.
    inputs = Counter(r.event.event_id for r in iter_journal(config, idle_timeout=10))
    assert inputs.most_common(1)[0][1] == 1
    assert len(inputs) == 13 + probes


def _counted_more(manager: ProcessManager | None, probes: int) -> bool:
    """Stop waiting (and fail on the exact check) as soon as the counters pass the probes."""
    s = manager.stats if manager is not None else None
    return s is not None and (s.handled > probes or s.duplicates > 0 or s.dlq > 0)
