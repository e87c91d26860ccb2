"""SQL of the change feed (migrations/0007_change_feed.sql): number events, read them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Any constant: one sequencer at a time across every server process.
_SEQUENCER_LOCK = 7_217_420_250_007

_NUMBER = """
WITH base AS (SELECT coalesce(max(sequence), 0) AS top FROM change_events),
     pending AS (
         SELECT id, row_number() OVER (ORDER BY id) AS n
         FROM change_events WHERE sequence IS NULL
     )
UPDATE change_events c SET sequence = base.top + pending.n
FROM base, pending
WHERE c.id = pending.id
"""


async def number_pending(conn: asyncpg.Connection) -> int:
    """Give the committed, unnumbered events feed positions; return how many were numbered.

    Under a transaction-scoped advisory lock, so sequencers of several servers take turns and
    each numbers after the highest position the previous one committed.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEQUENCER_LOCK)
        status: str = await conn.execute(_NUMBER)
        numbered = int(status.rsplit(" ", 1)[1])
        if numbered:
            await conn.execute("SELECT pg_notify('registry_feed', '')")
    return numbered


@dataclass(frozen=True)
class ChangeEvent:
    """One numbered event of the feed."""

    sequence: int
    type: int
    pin: str
    new_pin: str
    time: datetime


async def read(
    pool: asyncpg.Pool, after: int, types: Sequence[int], limit: int
) -> list[ChangeEvent]:
    """Return up to `limit` numbered events after position `after`, of the given types (all
    when empty), in position order."""
    rows = await pool.fetch(
        "SELECT sequence, type, pin, coalesce(new_pin, '') AS new_pin, time "
        "FROM change_events "
        "WHERE sequence > $1 AND (cardinality($2::smallint[]) = 0 OR type = ANY($2)) "
        "ORDER BY sequence LIMIT $3",
        after,
        list(types),
        limit,
    )
    return [ChangeEvent(**dict(r)) for r in rows]
