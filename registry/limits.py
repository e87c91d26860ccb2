"""Per-agency rate limits (SPEC §6): a token bucket per agency, refilled at its registered rate.

An agency registered with `--rate-limit N` may make N calls a second on average, in bursts of
up to N. Beyond that a call is refused at once with RESOURCE_EXHAUSTED, QuotaFailure and a
RetryInfo saying when the next call will be accepted, so one misbehaving agency cannot crowd
out the others.

The buckets live in each server process, and the limit is split exactly between the processes
that serve together (`shares` = REGISTRY_HOSTS x REGISTRY_WORKERS): each refills at N/shares
calls a second, so together they admit N a second, never more, without a database round trip
per call. The price: an agency whose calls all reach one process (one connection, one worker)
gets N/shares there; callers open several connections anyway to use every worker
(docs/callers.md). A bucket holds at least one call, so a limit below `shares` admits up to
`shares` calls in a burst, and N a second on average.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.errors import Code, QuotaViolation, RegistryError


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
        """Take one call from the agency's bucket, or raise RESOURCE_EXHAUSTED."""
        if rate_per_s is None:
            return
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
    `registry.alerts` logger for the operator to look into. Split exactly between the processes
    serving together, like the rate limits: each holds budget/shares.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, shares: int = 1):
        self._clock = clock
        self._shares = shares
        self._buckets: dict[str, _Bucket] = {}
        self._alerted: set[str] = set()

    def _bucket(self, agency_id: str, budget: int) -> _Bucket:
        now = self._clock()
        share = budget / self._shares
        capacity = max(share, 1.0)
        bucket = self._buckets.get(agency_id)
        if bucket is None:
            bucket = self._buckets[agency_id] = _Bucket(capacity, now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * share / 60)
            bucket.updated = now
        return bucket

    def check(self, agency_id: str, budget: int | None) -> None:
        """Refuse the agency's verifications while its budget is spent."""
        budget = budget or DEFAULT_MISS_BUDGET_PER_MIN
        bucket = self._bucket(agency_id, budget)
        if bucket.tokens >= 1.0:
            self._alerted.discard(agency_id)
            return
        wait_s = (1.0 - bucket.tokens) * 60 * self._shares / budget
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
