"""Queries behind the registry's sampled gauges (registry.runtime.metrics)."""

from __future__ import annotations

import asyncpg

from registry.rules.pin import BUCKET_SIZE

_FEED_LAG = """
SELECT coalesce(extract(epoch FROM clock_timestamp() - min(time)), 0)::float8
FROM change_events WHERE sequence IS NULL
"""
# The fullest buckets only: a label per bucket for all of them would be thousands of series.
_FULLEST = """
SELECT province_code, g, yy, issued FROM pin_buckets ORDER BY issued DESC LIMIT $1
"""


_CHECKPOINT_AGE = """
SELECT extract(epoch FROM clock_timestamp() - max(time))::float8 FROM audit_checkpoints
"""


async def sample(
    pool: asyncpg.Pool, buckets: int = 10
) -> tuple[float, float | None, list[tuple[str, float]]]:
    """Return (change-feed lag s, age of the last signed checkpoint s or None, and
    [(bucket PPP-G-YY, fill ratio)] of the fullest buckets)."""
    async with pool.acquire() as conn:
        lag = float(await conn.fetchval(_FEED_LAG))
        checkpoint_age = await conn.fetchval(_CHECKPOINT_AGE)
        rows = await conn.fetch(_FULLEST, buckets)
    fullest = [
        (f"{r['province_code']}-{r['g']}-{r['yy']:02d}", r["issued"] / BUCKET_SIZE) for r in rows
    ]
    return lag, checkpoint_age, fullest
