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

import asyncio
import secrets

import asyncpg

from registry.rules.pin import (
    BUCKET_SIZE,
    KEY_VERSION_SECRET,
    Bucket,
    bucket_key,
    secret_fingerprint,
)

# New buckets are keyed with the PIN secret (key_version 1, the stored key is a salt); the
# version is written explicitly, never left to the column default (0), so that a server of
# an older release in a rolling upgrade keeps making buckets it can use itself.
_RESERVE = """
INSERT INTO pin_buckets (province_code, g, yy, key, issued, key_version)
VALUES ($1, $2, $3, $4, $5, $7)
ON CONFLICT (province_code, g, yy) DO UPDATE
    SET issued = pin_buckets.issued + $5
    WHERE pin_buckets.issued + $5 <= $6
RETURNING issued - $5 AS first, key, key_version
"""


async def reserve(
    conn: asyncpg.Connection, bucket: Bucket, count: int = 1, *, secret: bytes | None
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
        KEY_VERSION_SECRET,
    )
    if row is None:
        return None
    return int(row["first"]), bucket_key(bytes(row["key"]), row["key_version"], secret)


_RESERVE_MANY = """
INSERT INTO pin_buckets (province_code, g, yy, key, issued, key_version)
SELECT p, g, y, k, n, $7
FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::bytea[], $5::int[])
     AS u(p, g, y, k, n)
ORDER BY p, g, y
ON CONFLICT (province_code, g, yy) DO UPDATE
    SET issued = pin_buckets.issued + EXCLUDED.issued
    WHERE pin_buckets.issued + EXCLUDED.issued <= $6
RETURNING province_code, g, yy, issued, key, key_version
"""


async def reserve_many(
    conn: asyncpg.Connection, wanted: dict[Bucket, int], *, secret: bytes | None
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
        KEY_VERSION_SECRET,
    )
    out: dict[Bucket, tuple[int, bytes]] = {}
    for row in rows:
        bucket = Bucket(row["province_code"], row["g"], row["yy"])
        key = bucket_key(bytes(row["key"]), row["key_version"], secret)
        out[bucket] = (int(row["issued"]) - wanted[bucket], key)
    return out


class SecretMismatch(RuntimeError):
    """This server's PIN secret is not the one the register's buckets are keyed with."""


async def check_secret(conn: asyncpg.Connection, secret: bytes) -> None:
    """Record the PIN secret's fingerprint the first time; refuse another secret after that."""
    fingerprint = secret_fingerprint(secret)
    await conn.execute(
        "INSERT INTO pin_key_secret (fingerprint) VALUES ($1) ON CONFLICT DO NOTHING", fingerprint
    )
    stored = await conn.fetchval("SELECT fingerprint FROM pin_key_secret")
    if bytes(stored) != fingerprint:
        raise SecretMismatch(
            "this server's PIN secret (pin-secret.key beside the signing keys) is not the one "
            "the register's PIN buckets are keyed with: copy that file from the other servers "
            '(docs/operations.md, "PIN secret")'
        )


# Counter values a server reserves ahead per bucket for births and PIN re-establishments: one
# reservation serves this many PINs of the bucket. Values left when the server stops are never
# issued (a bucket holds 1,000,000; a restart forgoes at most RANGE - 1 per bucket used).
RANGE = 8


class CounterRanges:
    """Counter values reserved ahead per bucket, handed out one at a time in this process.

    Another server process or an import reserves its own values from
    the same bucket row, so no value is ever handed out twice. Near a bucket's end a range
    shrinks to what is left, so every number is still issued.
    """

    def __init__(self, pool: asyncpg.Pool, size: int = RANGE):
        self._pool = pool
        self._size = size
        self.secret: bytes | None = None
        """The registry's PIN secret (registry.runtime.pin_secret); set once the server has it."""
        self._ranges: dict[Bucket, tuple[int, int, bytes]] = {}  # next, end, key
        self._locks: dict[Bucket, asyncio.Lock] = {}

    async def take(self, bucket: Bucket) -> tuple[int, bytes] | None:
        """Return (counter value, bucket key) for one PIN; None when the bucket is full."""
        taken = self._take_reserved(bucket)
        if taken is not None:
            return taken
        lock = self._locks.setdefault(bucket, asyncio.Lock())
        async with lock:
            taken = self._take_reserved(bucket)  # filled while we waited
            if taken is not None:
                return taken
            async with self._pool.acquire() as conn:
                reserved = await reserve(conn, bucket, self._size, secret=self.secret)
                count = self._size
                if reserved is None:  # not a whole range left: take the last numbers singly
                    reserved = await reserve(conn, bucket, 1, secret=self.secret)
                    count = 1
            if reserved is None:
                return None
            first, key = reserved
            if count > 1:
                self._ranges[bucket] = (first + 1, first + count, key)
            return first, key

    def _take_reserved(self, bucket: Bucket) -> tuple[int, bytes] | None:
        held = self._ranges.get(bucket)
        if held is None:
            return None
        value, end, key = held  # value < end
        if value + 1 == end:
            del self._ranges[bucket]
        else:
            self._ranges[bucket] = (value + 1, end, key)
        return value, key
