"""fetch-refund-policy: the versioned refund policy for an intent category, from a YAML file in the repo.

The file (`consumers/data/refund_policies.yaml`, or `policy_file=` / `PM_POLICY_FILE`) keeps
every version of each category. The step picks the newest version effective at the
command's `occurred_at` (not the wall clock), so the same command always gets the same
policy, and the result names the version. Unknown categories get the `default` category.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from customer_email.events import RefundPolicy, RefundPolicyFetched, RefundPolicyFetchedPayload, Step
from pm.config import Config
from pm.errors import PmError
from pm.events import Event, utc_ms
from pm.steps.handler import PermanentError, result_event

__all__ = [
    "DEFAULT_POLICY_FILE",
    "PolicyFileError",
    "PolicyBook",
    "load_policies",
    "FetchRefundPolicyHandler",
    "build_handler",
]

DEFAULT_POLICY_FILE = Path(__file__).parent / "data" / "refund_policies.yaml"


class PolicyFileError(PmError):
    """The policy file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class _Version:
    effective_from: datetime
    policy: RefundPolicy


@dataclass(frozen=True)
class PolicyBook:
    """Every version of every category's policy, oldest first, plus the fallback category."""

    default_category: str
    versions: dict[str, list[_Version]]

    def policy_for(self, category: str, at: datetime) -> RefundPolicy:
        """The newest version of `category` (else the default category) effective at `at`."""
        chosen = category if category in self.versions else self.default_category
        effective = [v for v in self.versions[chosen] if v.effective_from <= utc_ms(at)]
        if not effective:
            raise PermanentError(f"no {chosen!r} refund policy is effective at {at.isoformat()}")
        return effective[-1].policy


def load_policies(path: Path) -> PolicyBook:
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyFileError(f"policy file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"policy file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("policies"), dict):
        raise PolicyFileError(f"policy file {path}: expected a mapping with `policies:`")
    default = str(data.get("default_category", "default"))
    versions: dict[str, list[_Version]] = {}
    for category, entries in data["policies"].items():
        if not isinstance(entries, list) or not entries:
            raise PolicyFileError(f"policy file {path}: category {category!r} needs a list of versions")
        parsed: list[_Version] = []
        for entry in entries:
            try:
                fields = dict(entry)
                effective = utc_ms(datetime.fromisoformat(str(fields.pop("effective_from"))))
                parsed.append(_Version(effective, RefundPolicy(category=str(category), **fields)))
            except (KeyError, TypeError, ValueError, ValidationError) as exc:
                raise PolicyFileError(f"policy file {path}: category {category!r}: {exc}") from exc
        parsed.sort(key=lambda v: v.effective_from)
        names = [v.policy.version for v in parsed]
        if len(set(names)) != len(names):
            raise PolicyFileError(f"policy file {path}: category {category!r} repeats a version: {names}")
        versions[str(category)] = parsed
    if default not in versions:
        raise PolicyFileError(f"policy file {path}: default category {default!r} has no policy")
    return PolicyBook(default_category=default, versions=versions)


class FetchRefundPolicyHandler:
    step = Step.FETCH_REFUND_POLICY

    def __init__(self, book: PolicyBook) -> None:
        self.book = book

    def handle(self, command: Event, now: datetime) -> Event:
        payload = command.payload
        policy = self.book.policy_for(payload.category, command.occurred_at)
        return result_event(
            command,
            RefundPolicyFetched,
            RefundPolicyFetchedPayload(command_id=payload.command_id, attempt=payload.attempt, policy=policy),
            now,
        )


def build_handler(config: Config, *, policy_file: Path | str | None = None) -> FetchRefundPolicyHandler:
    """`policy_file`, else `PM_POLICY_FILE`, else the repo's `consumers/data/refund_policies.yaml`."""
    path = Path(policy_file or os.environ.get("PM_POLICY_FILE") or DEFAULT_POLICY_FILE)
    return FetchRefundPolicyHandler(load_policies(path))
