"""The cards and legacy_ids tables."""

from __future__ import annotations

from datetime import date

import asyncpg

from registry.rules.cards import Card, CardIssue, CardKind, CardState

_COLUMNS = "serial, pin, kind, state, issue_date, expiry_date, issuing_authority, state_reason"


def _card(row: asyncpg.Record) -> Card:
    return Card(
        serial=row["serial"],
        pin=row["pin"],
        kind=CardKind(row["kind"]),
        state=CardState(row["state"]),
        issue_date=row["issue_date"],
        expiry_date=row["expiry_date"],
        issuing_authority=row["issuing_authority"],
        state_reason=row["state_reason"],
    )


async def history(conn: asyncpg.Connection, pin: str) -> tuple[int, date | None]:
    """Return how many cards were ever issued to this PIN, and the latest issue date."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, max(issue_date) AS latest FROM cards WHERE pin = $1", pin
    )
    return int(row["n"]), row["latest"]


async def supersede_current(conn: asyncpg.Connection, pin: str) -> None:
    """Mark the citizen's ACTIVE or WITHHELD card SUPERSEDED (a new card replaces it)."""
    await conn.execute(
        "UPDATE cards SET state = $2, update_time = now() "
        "WHERE pin = $1 AND state = ANY($3::smallint[])",
        pin,
        int(CardState.SUPERSEDED),
        [int(CardState.ACTIVE), int(CardState.WITHHELD)],
    )


async def insert_active(
    conn: asyncpg.Connection, issue: CardIssue, expiry: date | None, issued_by: str
) -> Card:
    """Record a new ACTIVE card (raises UniqueViolationError on cards_pkey for a used serial)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO cards (serial, pin, kind, state, issue_date, expiry_date, issuing_authority,
                           issued_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING {_COLUMNS}
        """,
        issue.serial,
        issue.pin,
        int(issue.kind),
        int(CardState.ACTIVE),
        issue.issue_date,
        expiry,
        issue.issuing_authority,
        issued_by,
    )
    return _card(row)


async def get(conn: asyncpg.Connection, serial: str, *, for_update: bool = False) -> Card | None:
    """Return the card with this serial, optionally locking it."""
    lock = " FOR NO KEY UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM cards WHERE serial = $1{lock}", serial)
    return None if row is None else _card(row)


async def set_state(conn: asyncpg.Connection, serial: str, state: CardState, reason: str) -> Card:
    """Change a (locked) card's state and reason."""
    row = await conn.fetchrow(
        f"UPDATE cards SET state = $2, state_reason = $3, update_time = now() "
        f"WHERE serial = $1 RETURNING {_COLUMNS}",
        serial,
        int(state),
        reason,
    )
    return _card(row)


async def list_for_pin(conn: asyncpg.Connection, pin: str) -> list[Card]:
    """Return a citizen's cards, newest first (issue date, then order of recording)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM cards WHERE pin = $1 ORDER BY issue_date DESC, seq DESC", pin
    )
    return [_card(row) for row in rows]


async def link_legacy_id(conn: asyncpg.Connection, legacy_id: str, pin: str, by: str) -> str:
    """Link a legacy number to a PIN if it is free; return its owner's PIN."""
    owner = await conn.fetchval(
        "INSERT INTO legacy_ids (legacy_id, pin, linked_by) VALUES ($1, $2, $3) "
        "ON CONFLICT (legacy_id) DO NOTHING RETURNING pin",
        legacy_id,
        pin,
        by,
    )
    if owner is None:
        owner = await conn.fetchval("SELECT pin FROM legacy_ids WHERE legacy_id = $1", legacy_id)
    return str(owner)


async def legacy_owner(conn: asyncpg.Connection, legacy_id: str) -> str | None:
    """Return the PIN a legacy number is linked to, if any."""
    owner = await conn.fetchval("SELECT pin FROM legacy_ids WHERE legacy_id = $1", legacy_id)
    return None if owner is None else str(owner)
