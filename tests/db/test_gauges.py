"""registry/db/gauges.py against PostgreSQL, as the server's runtime role.

The gauges read whole tables (the feed's backlog, the newest checkpoint, the fullest
buckets), so these tests work in a database of their own (tests/db/conftest.py `private_db`).
"""

from __future__ import annotations

from registry.db import gauges
from registry.rules.pin import BUCKET_SIZE
from tests.db.conftest import connected


async def test_sample_of_an_empty_register(private_pool):
    assert await gauges.sample(private_pool) == (0.0, None, [])


async def test_sample_measures_the_backlog_the_checkpoint_and_the_fullest_buckets(
    private_pool, private_db
):
    async with connected(private_db.superuser) as su:
        await su.execute(
            "INSERT INTO change_events (sequence, type, pin, time) VALUES "
            "(1, 1, '001080000001', now() - interval '1 hour'), "  # numbered: no backlog
            "(NULL, 1, '001080000002', now() - interval '30 seconds'), "
            "(NULL, 1, '001080000003', now() - interval '5 seconds')"
        )
        await su.execute(
            "INSERT INTO audit_checkpoints (seq, head_hash, time, jws) VALUES "
            "(1, $1, now() - interval '10 minutes', 'a'), "
            "(2, $1, now() - interval '60 seconds', 'b')",
            bytes(32),
        )
        await su.execute(
            "INSERT INTO pin_buckets (province_code, g, yy, key, issued) VALUES "
            "('001', 2, 5, $1, 500000), ('002', 3, 99, $1, 10), ('004', 0, 80, $1, 999999), "
            "('006', 1, 0, $1, 250000)",
            bytes(32),
        )
    lag, checkpoint_age, fullest = await gauges.sample(private_pool, buckets=3)
    assert 30 <= lag < 40  # the oldest event still waiting for a position
    assert checkpoint_age is not None and 60 <= checkpoint_age < 70
    assert fullest == [
        ("004-0-80", 999999 / BUCKET_SIZE),
        ("001-2-05", 0.5),
        ("006-1-00", 0.25),
    ]
    assert len((await gauges.sample(private_pool))[2]) == 4
