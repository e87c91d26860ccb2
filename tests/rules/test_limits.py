"""The per-agency token bucket, with a clock the test controls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry.rules.errors import Code, RegistryError
from registry.rules.limits import (
    DEFAULT_MISS_BUDGET_PER_MIN,
    DEFAULT_RATE_LIMIT_PER_S,
    RateLimiter,
    citizen_blocked_until,
    citizen_failure_limit,
    miss_budget_exhausted,
    miss_interval_s,
)


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
    assert DEFAULT_RATE_LIMIT_PER_S == 100  # README and docs/operations.md say 100/s
    for _ in range(100):
        limiter.check("portal", None)
    with pytest.raises(RegistryError) as info:
        limiter.check("portal", None)
    assert info.value.metadata == {"rate_limit_per_s": str(DEFAULT_RATE_LIMIT_PER_S)}
    clock.now += 1.0
    for _ in range(DEFAULT_RATE_LIMIT_PER_S):
        limiter.check("portal", None)


def test_the_retry_delay_is_the_time_until_the_bucket_holds_one_call():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(10):
        limiter.check("a", 10)
    clock.now += 0.05  # half a call's worth: the other half comes in 0.05 s
    with pytest.raises(RegistryError) as info:
        limiter.check("a", 10)
    assert info.value.retry_after_s == pytest.approx(0.05)


# -- the verification miss budget ---------------------------------------------------------------


def test_the_default_miss_budget_is_600_a_minute_refilled_at_10_a_second():
    """docs/operations.md: agencies registered without --miss-budget get 600 per minute (the
    budget's state is in the database, registry.usecases.budgets; its rule is here)."""
    assert DEFAULT_MISS_BUDGET_PER_MIN == 600
    assert miss_interval_s(None) == pytest.approx(0.1)  # one miss refills in 60/600 s
    error = miss_budget_exhausted("portal", None, 0.1)
    assert (error.code, error.reason) == (
        Code.RESOURCE_EXHAUSTED,
        "VERIFICATION_MISS_BUDGET_EXHAUSTED",
    )
    assert error.metadata == {"miss_budget_per_min": "600"}
    assert error.retry_after_s == pytest.approx(0.1)


def test_a_registered_miss_budget_replaces_the_default():
    assert miss_interval_s(5) == pytest.approx(12.0)
    assert miss_budget_exhausted("bank", 5, 12.0).metadata == {"miss_budget_per_min": "5"}


def test_five_failures_within_a_day_block_the_citizen_until_the_oldest_is_a_day_old():
    start = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    failures = [start + timedelta(minutes=m) for m in range(5)]
    assert citizen_blocked_until(failures[:4]) is None
    assert citizen_blocked_until(failures) == start + timedelta(hours=24)
    # The last five count: a sixth failure later moves the end to the second one's day.
    assert citizen_blocked_until([*failures, start + timedelta(hours=3)]) == failures[1] + (
        timedelta(hours=24)
    )


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


# -- the refusals as callers read them (pinned whole: found by mutation testing, issue 14) -----


def _whole(error: RegistryError) -> tuple:
    return (
        error.code,
        error.reason,
        error.message,
        [(q.subject, q.description) for q in error.quota_violations],
        error.metadata,
        error.retry_after_s,
    )


def test_the_rate_limit_refusal_says_the_limit_and_when_to_retry():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.check("bank-x", 4)
    limiter.check("bank-x", 4)
    limiter.check("bank-x", 4)
    limiter.check("bank-x", 4)
    with pytest.raises(RegistryError) as info:
        limiter.check("bank-x", 4)
    assert _whole(info.value) == (
        Code.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "agency 'bank-x' exceeded its rate limit of 4 calls per second; retry in 0.25 s",
        [("agency:bank-x", "4 calls per second")],
        {"rate_limit_per_s": "4"},
        0.25,
    )


def test_the_miss_budget_refusal_says_the_budget_and_when_lookups_resume():
    assert _whole(miss_budget_exhausted("portal", 30, 1.5)) == (
        Code.RESOURCE_EXHAUSTED,
        "VERIFICATION_MISS_BUDGET_EXHAUSTED",
        "agency 'portal' received more than 30 NOT_FOUND/NO_MATCH answers in the last minute; "
        "its lookups and verifications resume in 1.5 s",
        [("agency:portal", "30 NOT_FOUND/NO_MATCH answers per minute")],
        {"miss_budget_per_min": "30"},
        1.5,
    )


def test_the_citizen_failure_refusal_says_five_in_24_hours_and_names_no_citizen():
    assert _whole(citizen_failure_limit("bank", 3600.0)) == (
        Code.RESOURCE_EXHAUSTED,
        "CITIZEN_FAILURE_LIMIT",
        "this agency received 5 NO_MATCH answers about this citizen within 24 h; its "
        "verifications of this citizen resume in 3600 s",
        [("agency:bank", "5 NO_MATCH answers about one citizen per 24 h")],
        {"failure_limit": "5", "window_hours": "24"},
        3600.0,
    )
