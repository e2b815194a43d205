"""A token-bucket rate limit (requests/min and tokens/min) shared by a consumer's worker threads.

LLM endpoints limit requests and tokens per minute; going over earns HTTP 429s and
backoff. One `RateLimiter` per step consumer, held by its handler, so every worker
thread draws from the same two buckets. `acquire` blocks until both buckets allow
the call, then takes from both at once (taking from one and waiting on the other
would let a burst through later). Token use is only known after the call:
callers take an estimate up front and `settle` the difference afterwards, which
may leave the token bucket in debt (later callers wait it off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """One bucket: refills at `per_minute / 60` per second up to `capacity`. Not thread-safe alone."""

    def __init__(self, per_minute: float, capacity: float, now: float) -> None:
        if per_minute <= 0:
            raise ValueError("rate must be positive")
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self._stamp = now

    def refill(self, now: float) -> None:
        if now > self._stamp:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = max(self._stamp, now)

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` can be taken. More than the capacity needs a full bucket, then goes into debt."""
        need = min(amount, self.capacity)
        # The epsilon absorbs float rounding of the refill, which could otherwise ask for a sleep
        # too short to move the clock.
        return 0.0 if self.level + 1e-9 >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests/min and tokens/min limits; `None` means unlimited. Thread-safe.

    `burst_seconds` sizes each bucket as that many seconds' worth of its rate
    (at least one request / one token), so calls are spread over the minute
    instead of a whole minute's budget going out at once.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be positive")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        now = clock()
        self.requests = TokenBucket(rpm, max(1.0, rpm * burst_seconds / 60.0), now) if rpm else None
        self.tokens = TokenBucket(tpm, max(1.0, tpm * burst_seconds / 60.0), now) if tpm else None

    @property
    def unlimited(self) -> bool:
        return self.requests is None and self.tokens is None

    def acquire(self, tokens: int = 0) -> float:
        """Block until one request with about `tokens` tokens is allowed; returns the seconds waited."""
        start = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                wait = 0.0
                if self.requests is not None:
                    self.requests.refill(now)
                    wait = max(wait, self.requests.wait_for(1))
                if self.tokens is not None:  # even a 0-token call waits off an earlier call's debt
                    self.tokens.refill(now)
                    wait = max(wait, self.tokens.wait_for(tokens))
                if wait <= 0:
                    if self.requests is not None:
                        self.requests.take(1)
                    if self.tokens is not None:
                        self.tokens.take(tokens)
                    return now - start
            # Sleep outside the lock so other threads can refill/check; re-check afterwards.
            self._sleep(wait)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known (debt when more, refund when less)."""
        if self.tokens is None:
            return
        with self._lock:
            self.tokens.refill(self._clock())
            if actual > estimated:
                self.tokens.take(actual - estimated)
            elif estimated > actual:
                self.tokens.give_back(estimated - actual)
