"""Reads for identity verification: one query per claim or per batch, budget state included.

The query also reads what the oracle budgets need to decide before answering (the agency's
miss-budget wait, the agency's recent failures about each citizen), so that a MATCH costs no
statement beyond it (registry.usecases.budgets).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg

from registry.rules.cards import CardState
from registry.rules.dates import PartialDate
from registry.rules.identity import Record
from registry.rules.model import CitizenStatus, Sex

E = TypeVar("E", bound=enum.IntEnum)

# $3 agency, $4 seconds per miss, $5 the miss budget's period. The failures come as stored
# (at most the limit) and are aged in Python: a subquery per row doubled the query's cost.
_BUDGET_STATE = """
       f.failures,
       (SELECT greatest(b.tat + $4 - $5 - extract(epoch FROM now())::float8, 0)
          FROM agency_miss_budgets b WHERE b.agency_id = $3) AS miss_wait,
       now() AS now
"""

# An unknown PIN returns no row and no budget state: its NOT_FOUND is charged anyway, and the
# charge says whether the budget allows it.
_ONE = f"""
SELECT true AS found, c.full_name, c.birth_year, c.birth_month, c.birth_day, c.sex, c.status,
       k.state AS card_state, k.expiry_date, {_BUDGET_STATE}
  FROM citizens c
  LEFT JOIN cards k ON k.serial = $2 AND k.pin = c.pin
  LEFT JOIN verification_failures f ON f.agency_id = $3 AND f.pin = c.pin
 WHERE c.pin = $1
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
    now: datetime | None
    """The database's time (None: nothing was found, nothing needs it)."""


def _record(row: asyncpg.Record) -> Record | None:
    if not row["found"]:
        return None
    state = row["card_state"]
    return Record(
        full_name=row["full_name"],
        date_of_birth=PartialDate(row["birth_year"], row["birth_month"], row["birth_day"]),
        sex=_member(_SEXES, Sex, row["sex"]),
        status=_member(_STATUSES, CitizenStatus, row["status"]),
        card_state=None if state is None else _member(_CARD_STATES, CardState, state),
        card_expiry=row["expiry_date"],
    )


# Members by number: a dictionary lookup instead of an Enum call, three per verified claim.
_SEXES = {m.value: m for m in Sex}
_STATUSES = {m.value: m for m in CitizenStatus}
_CARD_STATES = {m.value: m for m in CardState}


def _member(members: dict[int, E], kind: type[E], value: int) -> E:
    member = members.get(value)
    return kind(value) if member is None else member  # an unknown number raises ValueError


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
    budget = (agency_id, miss_interval_s, miss_period_s)
    if len(claims) == 1:
        [(pin, serial)] = claims
        row = await conn.fetchrow(_ONE, pin, serial, *budget)
        if row is None:
            return Found([None], [()], 0.0, None)
        rows = [row]
    else:
        fetched = await conn.fetch(_MANY, [p for p, _ in claims], [s for _, s in claims], *budget)
        rows = sorted(fetched, key=lambda r: r["i"])
    now = rows[0]["now"]
    since = now - failure_window
    return Found(
        records=[_record(r) for r in rows],
        failures=[tuple(sorted(t for t in r["failures"] or () if t > since)) for r in rows],
        miss_wait_s=float(rows[0]["miss_wait"] or 0.0),
        now=now,
    )
