"""PIN bucket counters.

Reserving the next counter value of a bucket is a single upsert on the `counters` pool, whose
connections commit asynchronously (synchronous_commit=off). That is safe because the citizen
row that uses the value commits synchronously afterwards: its WAL flush covers every earlier
WAL record, the counter increment included. A crash can only lose an increment whose citizen
never committed, so a number is never issued twice. The short autocommit transaction keeps the
bucket row locked for microseconds instead of for a whole fsync, so births into the same bucket
do not queue behind each other's commits.
"""

from __future__ import annotations

import secrets

import asyncpg

from registry.pin import BUCKET_SIZE, Bucket

_RESERVE = """
INSERT INTO pin_buckets (province_code, g, yy, key, issued)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (province_code, g, yy) DO UPDATE
    SET issued = pin_buckets.issued + $5
    WHERE pin_buckets.issued + $5 <= $6
RETURNING issued - $5 AS first, key
"""


async def reserve(
    conn: asyncpg.Connection, bucket: Bucket, count: int = 1
) -> tuple[int, bytes] | None:
    """Reserve `count` consecutive counter values; return (first, bucket key), None if full."""
    row = await conn.fetchrow(
        _RESERVE,
        bucket.province_code,
        bucket.g,
        bucket.yy,
        secrets.token_bytes(32),
        count,
        BUCKET_SIZE,
    )
    if row is None:
        return None
    return int(row["first"]), bytes(row["key"])


_RESERVE_MANY = """
INSERT INTO pin_buckets (province_code, g, yy, key, issued)
SELECT p, g, y, k, n
FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::bytea[], $5::int[])
     AS u(p, g, y, k, n)
ORDER BY p, g, y
ON CONFLICT (province_code, g, yy) DO UPDATE
    SET issued = pin_buckets.issued + EXCLUDED.issued
    WHERE pin_buckets.issued + EXCLUDED.issued <= $6
RETURNING province_code, g, yy, issued, key
"""


async def reserve_many(
    conn: asyncpg.Connection, wanted: dict[Bucket, int]
) -> dict[Bucket, tuple[int, bytes]]:
    """Reserve counter ranges in many buckets with one statement: {bucket: (first, key)}.

    Buckets that cannot give the whole range (full) are missing from the answer. Rows are
    locked in bucket order, so concurrent importers cannot deadlock each other.
    """
    order = sorted(wanted, key=lambda b: (b.province_code, b.g, b.yy))
    rows = await conn.fetch(
        _RESERVE_MANY,
        [b.province_code for b in order],
        [b.g for b in order],
        [b.yy for b in order],
        [secrets.token_bytes(32) for _ in order],
        [wanted[b] for b in order],
        BUCKET_SIZE,
    )
    out: dict[Bucket, tuple[int, bytes]] = {}
    for row in rows:
        bucket = Bucket(row["province_code"], row["g"], row["yy"])
        out[bucket] = (int(row["issued"]) - wanted[bucket], bytes(row["key"]))
    return out
