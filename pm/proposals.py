"""What a human approves: a proposal's canonical JSON and its hash (pure).

A process asks for approval of one of its own models (a reply to send, a credit note, ...). The
request carries that model as canonical JSON, and the hash of those bytes binds every decision
to exactly the content the reviewer saw.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

__all__ = ["canonical_json", "proposal_hash"]


def canonical_json(value: BaseModel | dict[str, Any]) -> str:
    """Sorted keys, no whitespace, non-ASCII as itself: the same text in every language and run."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def proposal_hash(proposal: str) -> str:
    """sha256 hex of the proposal's canonical JSON text (UTF-8)."""
    return hashlib.sha256(proposal.encode("utf-8")).hexdigest()
