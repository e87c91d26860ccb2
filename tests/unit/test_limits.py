"""The per-agency token bucket, with a clock the test controls."""

from __future__ import annotations

import pytest

from registry.errors import Code, RegistryError
from registry.limits import RateLimiter


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


def test_agencies_do_not_share_buckets_and_unlimited_agencies_are_never_refused():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.check("slow", 1)
    with pytest.raises(RegistryError):
        limiter.check("slow", 1)
    limiter.check("other", 1)
    for _ in range(10_000):
        limiter.check("portal", None)


def test_split_over_shares_each_process_admits_its_exact_part():
    """Four processes share a limit of 20/s: each admits 5 now and 5 a second after."""
    clock = Clock()
    limiters = [RateLimiter(clock, shares=4) for _ in range(4)]
    admitted = 0
    for limiter in limiters:
        for _ in range(10):
            try:
                limiter.check("bank", 20)
                admitted += 1
            except RegistryError as exc:
                assert exc.retry_after_s == pytest.approx(0.2)
    assert admitted == 20
    clock.now += 1.0
    assert sum(_drain(limiter, "bank", 20) for limiter in limiters) == 20


def test_a_limit_below_the_shares_still_admits_one_call_per_process_and_its_rate():
    clock = Clock()
    limiter = RateLimiter(clock, shares=4)
    limiter.check("slow", 2)  # a bucket holds at least one call
    with pytest.raises(RegistryError) as info:
        limiter.check("slow", 2)
    assert info.value.retry_after_s == pytest.approx(2.0)  # 2/s over 4 processes: 0.5/s here


def _drain(limiter: RateLimiter, agency: str, rate: int) -> int:
    admitted = 0
    while True:
        try:
            limiter.check(agency, rate)
        except RegistryError:
            return admitted
        admitted += 1
