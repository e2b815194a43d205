"""The token-bucket rate limiter: exact behaviour on a fake clock, then real threads on the real clock."""

from __future__ import annotations

import threading
import time

import pytest

from consumers.rate_limit import RateLimiter


class FakeClock:
    """`sleep` advances `now`: the limiter's waits become exact and instant."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_unlimited_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    assert limiter.unlimited
    for _ in range(1000):
        assert limiter.acquire(10_000) == 0.0
    assert clock.slept == []


def test_requests_per_minute_spacing_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, burst_seconds=3.0, clock=clock, sleep=clock.sleep)  # 1/s, burst 3
    grants = []
    for _ in range(6):
        limiter.acquire()
        grants.append(clock.now - 100.0)
    assert grants == pytest.approx([0, 0, 0, 1, 2, 3])


def test_tokens_per_minute_waits_for_the_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        tpm=6000, burst_seconds=1.0, clock=clock, sleep=clock.sleep
    )  # 100 tokens/s, burst 100
    limiter.acquire(100)
    assert clock.now == 100.0
    waited = limiter.acquire(50)  # bucket empty: 0.5 s for 50 tokens
    assert waited == pytest.approx(0.5)
    limiter.acquire(100)
    assert clock.now - 100.0 == pytest.approx(1.5)


def test_a_call_larger_than_the_bucket_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=6000, clock=clock, sleep=clock.sleep)  # capacity 100
    limiter.acquire(300)  # full bucket: allowed at once, leaves a 200-token debt
    assert clock.now == 100.0
    limiter.acquire(0)  # even a zero-token call waits the debt off (2 s)
    assert clock.now - 100.0 == pytest.approx(2.0)


def test_settle_charges_extra_usage_and_refunds_overestimates() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=6000, clock=clock, sleep=clock.sleep)  # 100/s, capacity 100
    limiter.acquire(50)
    limiter.settle(estimated=50, actual=150)  # real use 100 more than estimated: level 100-150 = -50
    limiter.acquire(100)  # needs 150 tokens of refill: 1.5 s
    assert clock.now - 100.0 == pytest.approx(1.5)
    limiter.settle(estimated=100, actual=10)  # 90 back
    limiter.acquire(90)
    assert clock.now - 100.0 == pytest.approx(1.5)


def test_both_limits_apply_together() -> None:
    clock = FakeClock()
    # 2 requests/s (burst 2), 100 tokens/s (burst 100): 60-token calls are token-bound after the first.
    limiter = RateLimiter(rpm=120, tpm=6000, clock=clock, sleep=clock.sleep)
    grants = []
    for _ in range(4):
        limiter.acquire(60)
        grants.append(round(clock.now - 100.0, 6))
    assert grants == pytest.approx([0.0, 0.2, 0.8, 1.4])


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rpm=-1)
    with pytest.raises(ValueError):
        RateLimiter(rpm=10, burst_seconds=0)


def test_threads_share_one_limit_on_the_real_clock() -> None:
    # 20 requests/s with a burst of one, 4 threads x 3 calls: 12 grants need at least 11 * 0.05 s.
    limiter = RateLimiter(rpm=1200, burst_seconds=0.05)
    grants: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(3):
            limiter.acquire()
            with lock:
                grants.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    elapsed = time.monotonic() - started
    assert len(grants) == 12
    assert 0.5 <= elapsed < 2.5
    # No window of 0.2 s holds more than the burst plus what the rate refills in it (1 + 4), with slack.
    grants.sort()
    for i, t0 in enumerate(grants):
        in_window = sum(1 for t in grants[i:] if t - t0 < 0.2)
        assert in_window <= 6
