"""The customer-email app's step handlers: one module per step, each exposing `build_handler(config, **options)`.

The app (`customer_email.app:APP`) names each step's factory as a string, so running one step never
imports another's dependencies. `load_handler` builds one by step name (tests and tools).
"""

from __future__ import annotations

from typing import Any

from pm.config import Config

__all__ = ["load_handler"]


def load_handler(step: str, config: Config, **options: Any) -> Any:
    """The bundled app's handler for `step` (`pm.app.AppError` names the steps when unknown)."""
    from customer_email.app import APP

    return APP.step(step).build_handler(config, **options)
