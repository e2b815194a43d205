"""What the LLM steps ask the model for: the pydantic models its JSON output must validate against."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from customer_email.events import Draft

__all__ = ["INTENTS", "Intent", "Risk", "Classification", "Draft"]

Intent = Literal["refund_request", "delivery_status", "complaint", "other"]
Risk = Literal["low", "medium", "high"]
INTENTS: tuple[str, ...] = ("refund_request", "delivery_status", "complaint", "other")


class Classification(BaseModel):
    """The classify step's model output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intent: Intent
    risk: Risk
    order_id: str | None = None  # as quoted in the e-mail, or null
    confidence: float = Field(ge=0.0, le=1.0)
