"""SQL of the oracle budgets (migrations/0019_oracle_budgets.sql): the agency miss budget and
the per-(agency, citizen) failure budget, shared by every server process.

Times are the database's clock (`now()`), so processes on several machines agree. Only the
paths that spend a budget write here: a MATCH or a found record costs no statement of its own
(the verification query reads the budget state it needs, `registry.db.verification`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

# How many misses fit now, for a bucket row `b`, with $2 = seconds per miss and $4 = the
# budget's period in seconds (the tiny epsilon keeps float rounding from losing a whole miss).
_ROOM = "greatest(0, floor((n.s + $4 - greatest(b.tat, n.s)) / $2 + 1e-9))"
_GRANT = f"least($3, {_ROOM})::int"

# One statement, one row lock: concurrent charges of several processes serialise on the
# agency's row and each sees the previous one's result. SET expressions read the row as it
# was, so `was_alerted` keeps the old flag for RETURNING (PostgreSQL 15 has no RETURNING OLD).
# An episode ends when the bucket was full again (tat in the past) at a charge.
_CHARGE = f"""
UPDATE agency_miss_budgets b
   SET granted = {_GRANT},
       tat = greatest(b.tat, n.s) + $2 * {_GRANT},
       was_alerted = b.alerted,
       alerted = CASE WHEN {_GRANT} < $3 THEN true
                      WHEN b.tat <= n.s THEN false
                      ELSE b.alerted END
  FROM (SELECT extract(epoch FROM now())::float8 AS s) n
 WHERE b.agency_id = $1
RETURNING b.granted, b.granted < $3 AND NOT b.was_alerted AS alert,
          b.tat + $2 - $4 - n.s AS retry_after_s
"""

_CREATE = """
INSERT INTO agency_miss_budgets (agency_id, tat)
VALUES ($1, extract(epoch FROM now())::float8)
ON CONFLICT (agency_id) DO NOTHING
"""

_MISS_WAIT = """
SELECT greatest(b.tat + $2 - $3 - extract(epoch FROM now())::float8, 0)
  FROM agency_miss_budgets b WHERE b.agency_id = $1
"""

# The failures still inside the window, oldest first ($3 = the window).
_RECENT_F = "ARRAY(SELECT t FROM unnest(f.failures) t WHERE t > now() - $3::interval ORDER BY t)"

# Set-based: each distinct PIN once, with how many failures this call adds to it; only as
# many as fit under the limit ($4) are kept. The failures stamped now() are this statement's.
_RECORD_FAILURES = f"""
WITH asked AS (SELECT p AS pin, count(*)::int AS n FROM unnest($2::text[]) AS p GROUP BY p)
INSERT INTO verification_failures AS f (agency_id, pin, failures)
SELECT $1, a.pin, array_fill(now(), ARRAY[least(a.n, $4)]) FROM asked a
ON CONFLICT (agency_id, pin) DO UPDATE
   SET failures = {_RECENT_F}
                  || excluded.failures[1:greatest(0, $4 - cardinality({_RECENT_F}))],
       alerted = f.alerted AND cardinality({_RECENT_F}) >= $4
RETURNING f.pin, (SELECT count(*) FROM unnest(f.failures) t WHERE t = now())::int AS accepted
"""


@dataclass(frozen=True)
class Charge:
    """The result of charging misses to an agency's budget."""

    granted: int
    alert: bool
    """This charge began a throttling episode: the caller reports it (once per episode)."""
    retry_after_s: float


async def charge_misses(
    conn: asyncpg.Connection | asyncpg.Pool,
    agency_id: str,
    misses: int,
    interval_s: float,
    period_s: float,
) -> Charge:
    """Grant up to `misses` from the agency's budget, atomically; say how many were granted."""
    for _ in range(2):
        row = await conn.fetchrow(_CHARGE, agency_id, interval_s, misses, period_s)
        if row is not None:
            return Charge(row["granted"], row["alert"], max(0.0, row["retry_after_s"]))
        await conn.execute(_CREATE, agency_id)  # the agency's first miss: a full bucket
    raise RuntimeError("agency_miss_budgets row vanished")  # the runtime role cannot delete


async def miss_wait(
    conn: asyncpg.Connection | asyncpg.Pool, agency_id: str, interval_s: float, period_s: float
) -> float:
    """Return how long the agency must wait before a miss fits its budget (0: it fits now)."""
    wait = await conn.fetchval(_MISS_WAIT, agency_id, interval_s, period_s)
    return 0.0 if wait is None else float(wait)


async def mark_miss_alert(conn: asyncpg.Connection | asyncpg.Pool, agency_id: str) -> bool:
    """Mark the agency's throttling episode reported; True if this call is the first to."""
    row = await conn.fetchrow(
        "UPDATE agency_miss_budgets SET alerted = true "
        "WHERE agency_id = $1 AND NOT alerted RETURNING 1",
        agency_id,
    )
    return row is not None


async def record_failures(
    conn: asyncpg.Connection | asyncpg.Pool,
    agency_id: str,
    pins: Sequence[str],
    window: timedelta,
    limit: int,
) -> dict[str, int]:
    """Record NO_MATCH answers (one per item of pins); return how many were accepted per PIN.

    A failure is accepted only while the agency has fewer than `limit` failures about that
    citizen within `window`: the answer it stands for may then be given.
    """
    rows = await conn.fetch(_RECORD_FAILURES, agency_id, list(pins), window, limit)
    return {r["pin"]: r["accepted"] for r in rows}


async def mark_failure_alerts(
    conn: asyncpg.Connection | asyncpg.Pool, agency_id: str, pins: Sequence[str]
) -> int:
    """Mark the blocking episodes of these citizens reported; return how many were new."""
    rows = await conn.fetch(
        "UPDATE verification_failures SET alerted = true "
        "WHERE agency_id = $1 AND pin = ANY($2::text[]) AND NOT alerted RETURNING 1",
        agency_id,
        list(pins),
    )
    return len(rows)
