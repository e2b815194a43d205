"""Step consumers: run any app's step handler against its `cmd.<step>` topic, exactly once per command.

A handler has `step` (its name) and `handle(command, now) -> Event` (a result, or a `StepFailed`
via `failed_result`); it raises `TransientError` to be retried with backoff, `PermanentError` to
fail the command. `StepConsumer` consumes, runs handlers on a worker pool with backpressure, dedupes
by command ID in a local ledger, and produces results to `step.results`.
"""

from __future__ import annotations

from pm.steps.consumer import RetryPolicy, StepConsumer, run_step_consumer
from pm.steps.handler import PermanentError, StepHandler, TransientError, failed_result, result_event
from pm.steps.ledger import Ledger

__all__ = [
    "Ledger",
    "PermanentError",
    "RetryPolicy",
    "StepConsumer",
    "StepHandler",
    "TransientError",
    "failed_result",
    "result_event",
    "run_step_consumer",
]
