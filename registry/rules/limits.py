"""Per-agency rate limits (SPEC §6): a token bucket per agency, refilled at its registered rate.

An agency registered with `--rate-limit N` may make N calls a second on average, in bursts of
up to N; one registered without it gets DEFAULT_RATE_LIMIT_PER_S. Beyond that a call is
refused at once with RESOURCE_EXHAUSTED, QuotaFailure and a RetryInfo saying when the next
call will be accepted, so one misbehaving agency cannot crowd out the others.

The buckets live in each server process, and the limit is split exactly between the processes
that serve together (`shares` = REGISTRY_HOSTS x REGISTRY_WORKERS): each refills at N/shares
calls a second, so together they admit N a second, never more, without a database round trip
per call. The price: an agency whose calls all reach one process (one connection, one worker)
gets N/shares there; callers open several connections anyway to use every worker
(docs/callers.md). A bucket holds at least one call, so a limit below `shares` admits up to
`shares` calls in a burst, and N a second on average.

The oracle budgets (a miss budget per agency, a failure budget per agency and citizen) are
stricter: their state lives in the database and every server process spends the same budget
(registry.usecases.budgets); their rules and refusals are here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from registry.rules.errors import Code, QuotaViolation, RegistryError

# Calls per second of an agency registered without `--rate-limit`. One server process on the
# 2-core reference machine commits ~450-570 births/s and answers a few thousand verifications/s
# (docs/benchmarks.md): at 100/s no single default agency can take more than about a fifth of
# the write capacity, while a civil-status office or a portal's front end rarely needs more
# than a few calls a second. Bulk work goes through one streaming call (BatchVerify,
# ImportCitizens), which counts once. Agencies that need more are registered with a limit.
DEFAULT_RATE_LIMIT_PER_S = 100


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by agency id: this process's share of each agency's limit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, shares: int = 1):
        self._clock = clock
        self._shares = shares
        self._buckets: dict[str, _Bucket] = {}

    def check(self, agency_id: str, rate_per_s: int | None) -> None:
        """Take one call from the agency's bucket, or raise RESOURCE_EXHAUSTED.

        rate_per_s None: the agency was registered without a limit; it gets the default.
        """
        rate_per_s = rate_per_s or DEFAULT_RATE_LIMIT_PER_S
        now = self._clock()
        rate = rate_per_s / self._shares
        capacity = max(rate, 1.0)
        bucket = self._buckets.get(agency_id)
        if bucket is None:
            bucket = self._buckets[agency_id] = _Bucket(capacity, now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait_s = (1.0 - bucket.tokens) / rate
        raise RegistryError(
            Code.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            f"agency {agency_id!r} exceeded its rate limit of {rate_per_s} calls per second; "
            f"retry in {wait_s:.2f} s",
            quota_violations=(
                QuotaViolation(f"agency:{agency_id}", f"{rate_per_s} calls per second"),
            ),
            metadata={"rate_limit_per_s": str(rate_per_s)},
            retry_after_s=wait_s,
        )


# Default budget of misses (NOT_FOUND of a lookup, NO_MATCH of a verification) per agency and
# minute, for agencies registered without one (`registry agency add --miss-budget N`).
DEFAULT_MISS_BUDGET_PER_MIN = 600
MISS_PERIOD_S = 60.0
MISS_BUDGET_EXHAUSTED = "VERIFICATION_MISS_BUDGET_EXHAUSTED"
# The per-(agency, citizen) failure budget (SPEC §6): the largest peers freeze after 5 wrong
# attempts. Past it, the agency's verifications of that citizen are refused until the oldest
# of those failures is older than the window.
CITIZEN_FAILURE_LIMIT = 5
CITIZEN_FAILURE_WINDOW = timedelta(hours=24)


def miss_interval_s(budget: int | None) -> float:
    """Return the seconds one miss costs: the period over the agency's budget."""
    return MISS_PERIOD_S / (budget or DEFAULT_MISS_BUDGET_PER_MIN)


def citizen_blocked_until(failures: Sequence[datetime]) -> datetime | None:
    """Return until when failures (within the window, oldest first) block verification."""
    if len(failures) < CITIZEN_FAILURE_LIMIT:
        return None
    return failures[-CITIZEN_FAILURE_LIMIT] + CITIZEN_FAILURE_WINDOW


def miss_budget_exhausted(agency_id: str, budget: int | None, wait_s: float) -> RegistryError:
    """Build the refusal of an agency whose miss budget is spent."""
    budget = budget or DEFAULT_MISS_BUDGET_PER_MIN
    return RegistryError(
        Code.RESOURCE_EXHAUSTED,
        # The reason keeps its first name (callers match on it) though lookups spend it too.
        MISS_BUDGET_EXHAUSTED,
        f"agency {agency_id!r} received more than {budget} NOT_FOUND/NO_MATCH answers in the "
        f"last minute; its lookups and verifications resume in {wait_s:.1f} s",
        quota_violations=(
            QuotaViolation(
                f"agency:{agency_id}", f"{budget} NOT_FOUND/NO_MATCH answers per minute"
            ),
        ),
        metadata={"miss_budget_per_min": str(budget)},
        retry_after_s=wait_s,
    )


def citizen_failure_limit(agency_id: str, wait_s: float) -> RegistryError:
    """Build the refusal of a verification of a citizen the agency failed on too often."""
    hours = int(CITIZEN_FAILURE_WINDOW.total_seconds() // 3600)
    return RegistryError(
        Code.RESOURCE_EXHAUSTED,
        "CITIZEN_FAILURE_LIMIT",
        f"this agency received {CITIZEN_FAILURE_LIMIT} NO_MATCH answers about this citizen "
        f"within {hours} h; its verifications of this citizen resume in {wait_s:.0f} s",
        quota_violations=(
            QuotaViolation(
                f"agency:{agency_id}",
                f"{CITIZEN_FAILURE_LIMIT} NO_MATCH answers about one citizen per {hours} h",
            ),
        ),
        metadata={"failure_limit": str(CITIZEN_FAILURE_LIMIT), "window_hours": str(hours)},
        retry_after_s=wait_s,
    )
