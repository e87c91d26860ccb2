"""The per-agency token bucket, with a clock the test controls."""

from __future__ import annotations

import pytest

from registry.errors import Code, RegistryError
from registry.limits import DEFAULT_RATE_LIMIT_PER_S, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_up_to_the_rate_passes_then_calls_are_refused_with_a_retry_delay():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(5):
        limiter.check("bank-x", 5)
    with pytest.raises(RegistryError) as info:
        limiter.check("bank-x", 5)
    error = info.value
    assert (error.code, error.reason) == (Code.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert error.retry_after_s == pytest.approx(0.2)
    assert [v.subject for v in error.quota_violations] == ["agency:bank-x"]


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(10):
        limiter.check("a", 10)
    clock.now += 0.25  # 2.5 calls' worth
    limiter.check("a", 10)
    limiter.check("a", 10)
    with pytest.raises(RegistryError):
        limiter.check("a", 10)
    clock.now += 3600  # an idle hour does not bank more than one second's burst
    for _ in range(10):
        limiter.check("a", 10)
    with pytest.raises(RegistryError):
        limiter.check("a", 10)


def test_agencies_do_not_share_buckets_and_one_without_a_limit_gets_the_default():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.check("slow", 1)
    with pytest.raises(RegistryError):
        limiter.check("slow", 1)
    limiter.check("other", 1)
    for _ in range(DEFAULT_RATE_LIMIT_PER_S):
        limiter.check("portal", None)
    with pytest.raises(RegistryError) as info:
        limiter.check("portal", None)
    assert info.value.metadata == {"rate_limit_per_s": str(DEFAULT_RATE_LIMIT_PER_S)}
    clock.now += 1.0
    for _ in range(DEFAULT_RATE_LIMIT_PER_S):
        limiter.check("portal", None)
