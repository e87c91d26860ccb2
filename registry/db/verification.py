"""Reads for identity verification: one query per claim or per batch, budget state included.

The query also reads what the oracle budgets need to decide before answering (the agency's
miss-budget wait, the agency's recent failures about each citizen), so that a MATCH costs no
statement beyond it (registry.budgets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from registry.cards import CardState
from registry.dates import PartialDate
from registry.db.budgets import RECENT
from registry.model import CitizenStatus, Sex
from registry.verification import Record

# $3 agency, $4 seconds per miss, $5 the miss budget's period, $6 the failure window.
_BUDGET_STATE = f"""
       {RECENT.format(failures="f.failures", window="$6")} AS failures,
       (SELECT greatest(b.tat + $4 - $5 - extract(epoch FROM now())::float8, 0)
          FROM agency_miss_budgets b WHERE b.agency_id = $3) AS miss_wait,
       now() AS now
"""

_ONE = f"""
SELECT c.pin IS NOT NULL AS found, c.full_name, c.birth_year, c.birth_month, c.birth_day,
       c.sex, c.status, k.state AS card_state, k.expiry_date, {_BUDGET_STATE}
  FROM (SELECT $1::text AS pin) q
  LEFT JOIN citizens c ON c.pin = q.pin
  LEFT JOIN cards k ON k.serial = $2 AND k.pin = q.pin
  LEFT JOIN verification_failures f ON f.agency_id = $3 AND f.pin = c.pin
"""

# Claims are numbered so that each answer finds its row; a missing citizen is a NULL row.
_MANY = f"""
SELECT q.i, c.pin IS NOT NULL AS found, c.full_name, c.birth_year, c.birth_month, c.birth_day,
       c.sex, c.status, k.state AS card_state, k.expiry_date, {_BUDGET_STATE}
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(pin, serial, i)
  LEFT JOIN citizens c ON c.pin = q.pin
  LEFT JOIN cards k ON k.serial = q.serial AND k.pin = q.pin
  LEFT JOIN verification_failures f ON f.agency_id = $3 AND f.pin = c.pin
"""


@dataclass(frozen=True)
class Found:
    """What the register holds for a batch of claims, and the budgets' state at that time."""

    records: list[Record | None]
    failures: list[tuple[datetime, ...]]
    """The agency's failures about each claim's citizen still inside the window, oldest first."""
    miss_wait_s: float
    """How long until a miss fits the agency's budget (0: now)."""
    now: datetime


def _record(row: asyncpg.Record) -> Record | None:
    if not row["found"]:
        return None
    state = row["card_state"]
    return Record(
        full_name=row["full_name"],
        date_of_birth=PartialDate(row["birth_year"], row["birth_month"], row["birth_day"]),
        sex=Sex(row["sex"]),
        status=CitizenStatus(row["status"]),
        card_state=None if state is None else CardState(state),
        card_expiry=row["expiry_date"],
    )


async def records(
    conn: asyncpg.Connection,
    claims: Sequence[tuple[str, str | None]],
    agency_id: str,
    *,
    miss_interval_s: float,
    miss_period_s: float,
    failure_window: timedelta,
) -> Found:
    """Return the records for (pin, card serial) claims in one query, in order."""
    budget = (agency_id, miss_interval_s, miss_period_s, failure_window)
    if len(claims) == 1:
        [(pin, serial)] = claims
        rows = [await conn.fetchrow(_ONE, pin, serial, *budget)]
    else:
        fetched = await conn.fetch(_MANY, [p for p, _ in claims], [s for _, s in claims], *budget)
        rows = sorted(fetched, key=lambda r: r["i"])
    return Found(
        records=[_record(r) for r in rows],
        failures=[tuple(r["failures"]) for r in rows],
        miss_wait_s=float(rows[0]["miss_wait"] or 0.0),
        now=rows[0]["now"],
    )
