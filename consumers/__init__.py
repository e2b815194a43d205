"""Step consumers: one module per step, each exposing `build_handler(config, **options) -> StepHandler`.

Modules load lazily (`load_handler`), so running one step never imports another's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

from pm.config import Config
from pm.errors import PmError

__all__ = ["STEP_MODULES", "UnknownStepError", "load_handler"]

STEP_MODULES: dict[str, str] = {
    "classify": "consumers.classify",
    "fetch-order": "consumers.fetch_order",
    "fetch-refund-policy": "consumers.fetch_refund_policy",
    "draft-reply": "consumers.draft_reply",
    "send-email": "consumers.send_email",
}


class UnknownStepError(PmError):
    """No step of that name."""


def load_handler(step: str, config: Config, **options: Any) -> Any:
    """The step's handler (a `consumers.step.StepHandler`), built from its module's `build_handler`."""
    module_name = STEP_MODULES.get(step)
    if module_name is None:
        raise UnknownStepError(f"unknown step {step!r}; known steps: {', '.join(STEP_MODULES)}")
    module = importlib.import_module(module_name)
    return module.build_handler(config, **options)
