"""Per-agency rate limits (SPEC §6): a token bucket per agency, refilled at its registered rate.

An agency registered with `--rate-limit N` may make N calls a second on average, in bursts of
up to N. Beyond that a call is refused at once with RESOURCE_EXHAUSTED, QuotaFailure and a
RetryInfo saying when the next call will be accepted, so one misbehaving agency cannot crowd
out the others. The buckets live in each server process: with several servers behind a load
balancer an agency's effective limit is N per server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.errors import Code, QuotaViolation, RegistryError


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
        """Take one call from the agency's bucket, or raise RESOURCE_EXHAUSTED."""
        if rate_per_s is None:
            return
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
