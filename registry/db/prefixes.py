"""The PIN province-code table as the operator maintains it in the database."""

from __future__ import annotations

import asyncpg

from registry.rules.pin import Prefix, PrefixTable


async def load(conn: asyncpg.Connection | asyncpg.Pool) -> PrefixTable:
    """Read the whole prefix table."""
    rows = await conn.fetch("SELECT code, name, kind, valid_from, valid_to FROM pin_prefixes")
    return PrefixTable.from_rows(
        Prefix(
            code=row["code"],
            name=row["name"],
            kind=row["kind"],
            valid_from=row["valid_from"],
            valid_to=row["valid_to"],
        )
        for row in rows
    )
