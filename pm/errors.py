"""The one base class for errors `pm` reports to a user as a message, not a traceback."""

from __future__ import annotations

__all__ = ["PmError"]


class PmError(Exception):
    """An expected failure with a message that says what to fix; the CLI prints it and exits 2."""
