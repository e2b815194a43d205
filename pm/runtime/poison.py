"""Poison isolation: the input that keeps its batch from committing is found and taken out of the way.

A batch commits as one transaction, so one record that can never be produced would abort it
forever and stall every process behind it on the partition. Two ways to find that record:

- **Attributed**: a delivery report (or `produce()` itself) names a record-specific error (too
  large, invalid record) for an output of input P. On the retry P is decided as `failed` (a
  journal entry without outputs: the process fails, visibly); should even that entry fail, P goes
  to the DLQ.
- **Bisected**: the transaction keeps aborting with a permanent error nobody can attribute (a
  commit refused, a topic the PM may not write). After `ABORTS_BEFORE_BISECT` aborts in a row the
  batch is halved, and halved again while it keeps aborting; a single input that still aborts is
  the poison. Its process is quarantined (`pm.fold.operate`): the input and every later input of
  that process are parked, journaled, until an operator releases it (`pm quarantine release`).
  Retriable errors (broker down, timeouts) never count: they are not the record's fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TextIO

from confluent_kafka import KafkaError

from pm.runtime.checkpoint import transient
from pm.runtime.state import Position

__all__ = ["PoisonIsolation", "ABORTS_BEFORE_BISECT"]

ABORTS_BEFORE_BISECT = 2  # the first abort may be bad luck; the second at the same place is not
SUCCESSES_BEFORE_FULL = 32  # committed batches at the reduced size before batches grow back


class PoisonIsolation:
    """What the next batches do differently after aborts: smaller batches, inputs to fail, quarantine or DLQ."""

    def __init__(self, log: TextIO) -> None:
        self.log = log
        self.limit: int | None = None  # at most this many inputs per batch while bisecting
        self.failing: dict[Position, str] = {}  # decide as failed (an output could not be produced)
        self.poison: dict[Position, str] = {}  # quarantine the process (its batch kept aborting)
        self.dead: dict[Position, str] = {}  # even the failure could not be journaled: DLQ
        self._streak = 0
        self._successes = 0

    def after_abort(
        self, positions: Sequence[Position], attributed: Mapping[Position, str], error: KafkaError | None
    ) -> None:
        """Learn from an aborted batch of `positions` (in consumption order)."""
        if attributed:
            for position, why in attributed.items():
                ladder = self.failing if position not in self.failing else self.dead
                ladder[position] = why
                self._say(
                    f"{_shown(position)}: {why}; next try: {'DLQ' if ladder is self.dead else 'fail its process'}"
                )
            return
        if error is None or transient(error) or not positions:
            return  # not the records' fault: retry as it is
        self._streak += 1
        if self._streak < ABORTS_BEFORE_BISECT:
            return
        self._streak = 0
        self._successes = 0
        if len(positions) > 1:
            self.limit = max(1, len(positions) // 2)
            self._say(f"batch of {len(positions)} keeps aborting ({error}); trying {self.limit}")
            return
        position = positions[0]
        if position in self.poison:  # even parking it aborted
            self.dead[position] = f"its transaction kept aborting, even to quarantine it: {error}"
            self._say(f"{_shown(position)}: cannot even be quarantined; next try: DLQ")
        else:
            self.poison[position] = f"its transaction kept aborting: {error}"
            self._say(f"{_shown(position)} keeps its batch from committing; next try: quarantine its process")

    def after_commit(self, positions: Sequence[Position]) -> None:
        self._streak = 0
        for position in positions:
            for ladder in (self.failing, self.poison, self.dead):
                if ladder.pop(position, None) is not None and ladder is not self.failing:
                    self.limit = None  # the poison is out of the way: full batches again
        if self.limit is not None:
            self._successes += 1
            if self._successes >= SUCCESSES_BEFORE_FULL:
                self.limit, self._successes = None, 0

    def forget(self, partitions: Sequence[int]) -> None:
        """Revoked partitions: their records are another instance's now."""
        for ladder in (self.failing, self.poison, self.dead):
            for position in [p for p in ladder if p[1] in partitions]:
                del ladder[position]

    def _say(self, text: str) -> None:
        print(f"pm: poison isolation: {text}", file=self.log, flush=True)


def _shown(position: Position) -> str:
    topic, partition, offset = position
    return f"{topic}/{partition}/{offset}"
