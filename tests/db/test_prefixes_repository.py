"""registry/db/prefixes.py against PostgreSQL, as the server's runtime role."""

from __future__ import annotations

import secrets
from datetime import date

import asyncpg

from registry.db import prefixes
from registry.rules.pin import Prefix, PrefixTable
from tests.db.conftest import connected


async def test_load_reads_the_seeded_table(private_db):
    async with connected(private_db.runtime) as conn:
        table = await prefixes.load(conn)
    assert isinstance(table, PrefixTable)
    assert dict(table) == dict(PrefixTable.load_default())
    assert table["001"] == Prefix("001", "Hà Nội", "province", date(2016, 1, 1), None)


async def test_load_sees_an_operators_codes_with_their_validity(private_db, private_su):
    closed, opened = (f"9{secrets.randbelow(50):02d}", f"9{50 + secrets.randbelow(50):02d}")
    await private_su.execute(
        "INSERT INTO pin_prefixes (code, name, kind, valid_from, valid_to) VALUES "
        "($1, 'Sinh ở nước ngoài (cũ)', 'abroad', '2016-01-01', '2025-12-31'), "
        "($2, 'Sinh ở nước ngoài', 'abroad', '2026-01-01', NULL)",
        closed,
        opened,
    )
    pool = await asyncpg.create_pool(private_db.runtime, min_size=1, max_size=1)
    try:
        table = await prefixes.load(pool)
    finally:
        await pool.close()
    assert table[closed] == Prefix(
        closed, "Sinh ở nước ngoài (cũ)", "abroad", date(2016, 1, 1), date(2025, 12, 31)
    )
    assert table[opened].valid_to is None and table[opened].valid_from == date(2026, 1, 1)
    assert table.is_known(closed) and not table.open_for_issuance(closed, date(2026, 6, 1))
    assert table.open_for_issuance(opened, date(2026, 6, 1))
    assert len(table) == len(PrefixTable.load_default()) + 2
