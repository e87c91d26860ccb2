"""SQL of the change feed (migrations/0007_change_feed.sql): number events, read them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Any constant: one sequencer at a time across every server process.
_SEQUENCER_LOCK = 7_217_420_250_007

# One round trip: a transaction that locks out other sequencers, numbers the committed,
# unnumbered events after the highest position so far and, when it numbered any, announces
# them (`registry_feed`, delivered at commit). A plain index scan of the partial index marks
# the entries of numbered rows dead as it passes them, so later runs skip them; a bitmap scan
# (the planner's choice on stale statistics) revisits every numbered row until VACUUM: 20-40 ms
# a run at 90,000 events, which made the sequencer cost a fifth of the births' throughput.
_NUMBER = f"""
BEGIN;
SET LOCAL enable_bitmapscan = off;
SELECT pg_advisory_xact_lock({_SEQUENCER_LOCK});
WITH base AS (
         -- After the highest position ever given, even if retention pruned it (0020).
         SELECT greatest(coalesce(max(sequence), 0),
                         (SELECT pruned_through FROM change_feed_horizon)) AS top
         FROM change_events
     ),
     pending AS (
         SELECT id, row_number() OVER (ORDER BY id) AS n
         FROM change_events WHERE sequence IS NULL
     ),
     numbered AS (
         UPDATE change_events c SET sequence = base.top + pending.n
         FROM base, pending
         WHERE c.id = pending.id
         RETURNING 1
     )
SELECT pg_notify('registry_feed', '') WHERE EXISTS (SELECT FROM numbered);
COMMIT;
"""


async def number_pending(conn: asyncpg.Connection) -> None:
    """Give the committed, unnumbered events feed positions and announce them.

    Under a transaction-scoped advisory lock, so sequencers of several servers take turns and
    each numbers after the highest position the previous one committed.
    """
    try:
        await conn.execute(_NUMBER)
    except BaseException:
        # A failure or cancellation mid-script can leave the transaction open.
        if not conn.is_closed() and conn.is_in_transaction():
            conn.terminate()
        raise


@dataclass(frozen=True)
class ChangeEvent:
    """One numbered event of the feed."""

    sequence: int
    type: int
    pin: str
    new_pin: str
    time: datetime


class FeedPruned(Exception):
    """The events after a cursor were pruned by retention; `oldest` is the first kept one."""

    def __init__(self, pruned_through: int):
        super().__init__(f"change events up to {pruned_through} were pruned")
        self.pruned_through = pruned_through


# One statement, so one snapshot: the horizon and the events are seen as of the same moment,
# and a cursor below the horizon is never answered with the events after the gap.
_READ = """
SELECT h.pruned_through, e.sequence, e.type, e.pin, e.new_pin, e.time
FROM change_feed_horizon h
LEFT JOIN LATERAL (
    SELECT sequence, type, pin, coalesce(new_pin, '') AS new_pin, time
    FROM change_events
    WHERE sequence > $1 AND (cardinality($2::smallint[]) = 0 OR type = ANY($2))
    ORDER BY sequence LIMIT $3
) e ON true
ORDER BY e.sequence
"""


async def read(
    pool: asyncpg.Pool, after: int, types: Sequence[int], limit: int
) -> list[ChangeEvent]:
    """Return up to `limit` numbered events after position `after`, of the given types (all
    when empty), in position order; raise FeedPruned if events after it were pruned."""
    rows = await pool.fetch(_READ, after, list(types), limit)
    if rows and rows[0]["pruned_through"] > after:
        raise FeedPruned(rows[0]["pruned_through"])
    return [
        ChangeEvent(r["sequence"], r["type"], r["pin"], r["new_pin"], r["time"])
        for r in rows
        if r["sequence"] is not None
    ]


async def prune(conn: asyncpg.Connection, keep_days: float, max_rows: int = 10_000) -> int:
    """Delete up to max_rows of the oldest numbered events older than keep_days; return how
    many (0 when another server is pruning). Runs as the owner (a SECURITY DEFINER function
    that refuses to delete anything younger than a day)."""
    removed = await conn.fetchval(
        "SELECT prune_change_events(make_interval(secs => $1), $2)", keep_days * 86400, max_rows
    )
    return int(removed)


async def horizon(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Return the highest position pruned (events at or below it are gone; 0: none)."""
    return int(await conn.fetchval("SELECT pruned_through FROM change_feed_horizon"))
