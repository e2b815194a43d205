"""The upstream API of the customer-email app: publish customer e-mails (`EmailPublisher`).

An upstream system that embeds `pm` publishes customer e-mails like this:

    with EmailPublisher(load_config()) as publisher:
        delivery = publisher.publish({"message_id": "<abc@mail>", "sender": ..., ...})
        print(delivery.correlation_id, delivery.partition, delivery.offset)

The value is an `EmailReceived` event; the record key is the correlation ID (the thread ID when
given, else the message ID). The event ID derives from the message ID, so publishing the same
e-mail twice is deduplicated by the PM. `received_at` defaults to the time of publishing when
absent; `occurred_at` is `received_at`, so a re-published e-mail is byte-identical. `sender` and
`recipient` must each be exactly one plain address (`customer_email.addresses.parse_address`):
a spoofed `"victim@shop.example" <attacker@evil.example>` or a list is refused with `InvalidEmail`.
The fields are published as given (display names kept); consumers parse them again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from customer_email.addresses import AddressError, parse_address
from customer_email.events import Email, EmailReceived, EmailReceivedPayload
from pm import telemetry
from pm.client import Delivery, DeliveryError, Publisher, describe_validation_error
from pm.errors import PmError
from pm.events import DlqRecord, derive_id
from pm.process import InvalidInput

__all__ = ["InvalidEmail", "EmailPublisher", "email_event", "parse_email_line"]


class InvalidEmail(InvalidInput, PmError):
    """An e-mail that does not fit the EmailReceived schema; the message names the fields."""


def email_event(email: Mapping[str, Any] | Email, *, now: datetime | None = None) -> EmailReceived:
    """The EmailReceived event for an upstream e-mail (validated; `InvalidEmail` says what is wrong)."""
    if isinstance(email, Email):
        fields: dict[str, Any] = email.model_dump()
    elif isinstance(email, Mapping):
        fields = dict(email)
    else:
        raise InvalidEmail(f"expected a JSON object with the e-mail fields, got {type(email).__name__}")
    if fields.get("received_at") is None:
        fields["received_at"] = now or datetime.now(UTC)
    try:
        payload = EmailReceivedPayload.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEmail(describe_validation_error(exc)) from exc
    # The schema only checks lengths; the PM and send-email trust these as one mailbox each.
    for name in ("sender", "recipient"):
        try:
            parse_address(getattr(payload, name), field=name)
        except AddressError as exc:
            raise InvalidEmail(str(exc)) from exc
    return EmailReceived(
        event_id=derive_id("email", payload.message_id),
        correlation_id=payload.thread_id or payload.message_id,
        causation_id=None,
        occurred_at=payload.received_at,
        payload=payload,
    )




def parse_email_line(data: Any) -> EmailReceived:
    """`pm emit email`: one JSON object with the EmailReceived fields -> the event (InvalidEmail if not)."""
    try:
        return email_event(data)
    except InvalidEmail as exc:
        raise InvalidEmail(f"invalid e-mail: {exc}") from exc


class EmailPublisher(Publisher):
    """Publishes upstream e-mails to `email.received` and waits for the broker's acknowledgement."""

    def submit(
        self, email: Mapping[str, Any] | Email, callback: Callable[[Delivery | DeliveryError], None]
    ) -> EmailReceived:
        """Validate and produce without waiting; `callback` gets the Delivery or the error later (on poll/flush)."""
        event = email_event(email)
        self.submit_event(event, callback)
        return event

    def submit_dead_letter(
        self,
        record: DlqRecord,
        headers: telemetry.Headers,
        callback: Callable[[Delivery | DeliveryError], None],
    ) -> None:
        """Produce a `pm.dlq` record (from `pm.dlq.dead_letter`) for input that could not be published."""
        self.submit_event(record, callback, headers=headers)

    def publish(self, email: Mapping[str, Any] | Email, timeout: float = 30.0) -> Delivery:  # type: ignore[override]
        """Validate, produce and wait until the broker has it; raises InvalidEmail or DeliveryError."""
        results: list[Delivery | DeliveryError] = []
        self.submit(email, results.append)
        return self._wait_one(results, timeout)

    def publish_many(
        self, emails: Iterable[Mapping[str, Any] | Email], timeout: float = 30.0
    ) -> list[Delivery]:
        """Publish several e-mails with one wait (faster), deliveries in input order.

        Raises at the first invalid e-mail (those before it are produced), or at the first failed delivery.
        """
        results: dict[int, Delivery | DeliveryError] = {}
        count = 0
        for count, email in enumerate(emails, start=1):
            self.submit(email, functools.partial(results.__setitem__, count))
        self.flush(timeout)
        ordered = [
            results.get(n, DeliveryError(f"e-mail {n}: no acknowledgement within {timeout:g} s"))
            for n in range(1, count + 1)
        ]
        for result in ordered:
            if isinstance(result, DeliveryError):
                raise result
        return [r for r in ordered if isinstance(r, Delivery)]
