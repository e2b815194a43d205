"""A flush that fails with confluent-kafka's cause-less SystemError still ends in an abort (a fenced
producer then stops the PM with FencedError), never in an unexplained crash."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pm.runtime.checkpoint import Checkpoint, FencedError


class _Producer:
    def __init__(self, abort_error: KafkaException | None = None) -> None:
        self.abort_error = abort_error
        self.aborted = False

    def flush(self, _timeout: float) -> int:
        raise SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL without setting an exception")

    def abort_transaction(self, _timeout: float) -> None:
        if self.abort_error is not None:
            raise self.abort_error
        self.aborted = True


def _checkpoint(producer: Any) -> Checkpoint:
    return Checkpoint(producer, None, now=datetime(2026, 12, 2, tzinfo=UTC), transactional_id="pm-t", log=io.StringIO())  # type: ignore[arg-type]


def test_a_causeless_flush_error_aborts_the_transaction_for_a_retry() -> None:
    producer = _Producer()
    checkpoint = _checkpoint(producer)
    with pytest.raises(KafkaException) as failed:
        checkpoint.flush()
    assert failed.value.args[0].txn_requires_abort()
    checkpoint.abort(failed.value)
    assert producer.aborted


def test_a_causeless_flush_error_of_a_fenced_producer_is_a_fenced_error() -> None:
    fenced = KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))
    checkpoint = _checkpoint(_Producer(abort_error=fenced))
    with pytest.raises(KafkaException) as failed:
        checkpoint.flush()
    with pytest.raises(FencedError, match="cannot abort"):
        checkpoint.abort(failed.value)
