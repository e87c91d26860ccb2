"""Reads for identity verification: one point query per claim, one query per batch."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from registry.cards import CardState
from registry.dates import PartialDate
from registry.model import CitizenStatus, Sex
from registry.verification import Record

_ONE = """
SELECT c.full_name, c.birth_year, c.birth_month, c.birth_day, c.sex, c.status,
       k.state AS card_state, k.expiry_date
  FROM citizens c
  LEFT JOIN cards k ON k.serial = $2 AND k.pin = c.pin
 WHERE c.pin = $1
"""

# Claims are numbered so that each answer finds its row; a missing citizen is a NULL row.
_MANY = """
SELECT q.i, c.pin IS NOT NULL AS found, c.full_name, c.birth_year, c.birth_month, c.birth_day,
       c.sex, c.status, k.state AS card_state, k.expiry_date
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(pin, serial, i)
  LEFT JOIN citizens c ON c.pin = q.pin
  LEFT JOIN cards k ON k.serial = q.serial AND k.pin = q.pin
"""


def _record(row: asyncpg.Record) -> Record:
    state = row["card_state"]
    return Record(
        full_name=row["full_name"],
        date_of_birth=PartialDate(row["birth_year"], row["birth_month"], row["birth_day"]),
        sex=Sex(row["sex"]),
        status=CitizenStatus(row["status"]),
        card_state=None if state is None else CardState(state),
        card_expiry=row["expiry_date"],
    )


async def record(conn: asyncpg.Connection, pin: str, serial: str | None) -> Record | None:
    """Return what the register holds for one claim, or None for an unknown PIN."""
    row = await conn.fetchrow(_ONE, pin, serial)
    return None if row is None else _record(row)


async def records(
    conn: asyncpg.Connection, claims: Sequence[tuple[str, str | None]]
) -> list[Record | None]:
    """Return the records for many (pin, card serial) claims in one query, in order."""
    rows = await conn.fetch(_MANY, [p for p, _ in claims], [s for _, s in claims])
    found: list[Record | None] = [None] * len(claims)
    for row in rows:
        if row["found"]:
            found[row["i"] - 1] = _record(row)
    return found
