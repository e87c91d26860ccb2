"""The audit chain of a database, walked as `registry audit verify` walks it."""

from __future__ import annotations

import asyncpg

from registry.db import audit as audit_db
from registry.rules import audit


async def _walk(dsn: str) -> audit.Walk:
    conn = await asyncpg.connect(dsn)
    try:
        check = audit.ChainCheck()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            head = await audit_db.head(conn)
            async for seq, entry, stored in audit_db.entries(conn):
                check.feed(seq, entry, stored)
        return check.finish(head)
    finally:
        await conn.close()
