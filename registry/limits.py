"""Per-agency rate limits (SPEC §6): a token bucket per agency, refilled at its registered rate.

An agency registered with `--rate-limit N` may make N calls a second on average, in bursts of
up to N; one registered without it gets DEFAULT_RATE_LIMIT_PER_S. Beyond that a call is
refused at once with RESOURCE_EXHAUSTED, QuotaFailure and a RetryInfo saying when the next
call will be accepted, so one misbehaving agency cannot crowd out the others. The buckets
live in each server process: with several servers behind a load balancer an agency's
effective limit is N per server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.errors import Code, QuotaViolation, RegistryError

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
    """Token buckets by agency id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, agency_id: str, rate_per_s: int | None) -> None:
        """Take one call from the agency's bucket, or raise RESOURCE_EXHAUSTED.

        rate_per_s None: the agency was registered without a limit; it gets the default.
        """
        rate_per_s = rate_per_s or DEFAULT_RATE_LIMIT_PER_S
        now = self._clock()
        capacity = float(rate_per_s)
        bucket = self._buckets.get(agency_id)
        if bucket is None:
            bucket = self._buckets[agency_id] = _Bucket(capacity, now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate_per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait_s = (1.0 - bucket.tokens) / rate_per_s
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


# Default budget of NOT_FOUND / NO_MATCH verification answers per agency and minute, for
# agencies registered without one (`registry agency add --miss-budget N` sets another).
DEFAULT_MISS_BUDGET_PER_MIN = 600
alerts = logging.getLogger("registry.alerts")


class MissBudget:
    """Per-agency budget of verification misses (NOT_FOUND / NO_MATCH answers) per minute.

    A yes/no oracle over PINs is an enumeration target: a caller trying numbers or names
    produces misses, an honest one mostly matches. Each agency may spend its budget per
    minute (refilled continuously); once it is spent, verifications are refused with
    RESOURCE_EXHAUSTED + RetryInfo until it refills, and one alert is logged per episode on the
    `registry.alerts` logger for the operator to look into. Per server process, like the rate
    limits.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._alerted: set[str] = set()

    def _bucket(self, agency_id: str, budget: int) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(agency_id)
        if bucket is None:
            bucket = self._buckets[agency_id] = _Bucket(float(budget), now)
        else:
            bucket.tokens = min(float(budget), bucket.tokens + (now - bucket.updated) * budget / 60)
            bucket.updated = now
        return bucket

    def check(self, agency_id: str, budget: int | None) -> None:
        """Refuse the agency's verifications while its budget is spent."""
        budget = budget or DEFAULT_MISS_BUDGET_PER_MIN
        bucket = self._bucket(agency_id, budget)
        if bucket.tokens >= 1.0:
            self._alerted.discard(agency_id)
            return
        wait_s = (1.0 - bucket.tokens) * 60 / budget
        if agency_id not in self._alerted:
            self._alerted.add(agency_id)
            alerts.warning(
                "agency %s spent its budget of %d NOT_FOUND/NO_MATCH verifications per minute; "
                "throttled (possible enumeration)",
                agency_id,
                budget,
                extra={
                    "fields": {
                        "alert": "VERIFICATION_MISS_BUDGET_EXHAUSTED",
                        "agency": agency_id,
                        "budget_per_min": budget,
                    }
                },
            )
        raise RegistryError(
            Code.RESOURCE_EXHAUSTED,
            "VERIFICATION_MISS_BUDGET_EXHAUSTED",
            f"agency {agency_id!r} received more than {budget} NOT_FOUND/NO_MATCH verification "
            f"answers in the last minute; verifications resume in {wait_s:.1f} s",
            quota_violations=(
                QuotaViolation(
                    f"agency:{agency_id}",
                    f"{budget} NOT_FOUND/NO_MATCH verification answers per minute",
                ),
            ),
            metadata={"miss_budget_per_min": str(budget)},
            retry_after_s=wait_s,
        )

    def spend(self, agency_id: str, misses: int, budget: int | None) -> None:
        """Take the misses of answered verifications from the agency's budget."""
        if misses:
            bucket = self._bucket(agency_id, budget or DEFAULT_MISS_BUDGET_PER_MIN)
            bucket.tokens -= misses
