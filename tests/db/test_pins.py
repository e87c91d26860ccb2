"""registry/db/pins.py against PostgreSQL, as the server's runtime role.

The PIN secret's fingerprint is recorded once per database, so these tests work in a database
of their own (tests/db/conftest.py `private_db`).
"""

from __future__ import annotations

import os

import asyncpg
import pytest

from registry.db import pins
from registry.rules.pin import (
    BUCKET_SIZE,
    Bucket,
    PinSecretMissing,
    bucket_key,
    secret_fingerprint,
)

SECRET = os.urandom(32)


async def bucket_row(su: asyncpg.Connection, bucket: Bucket) -> asyncpg.Record:
    return await su.fetchrow(
        "SELECT * FROM pin_buckets WHERE province_code = $1 AND g = $2 AND yy = $3",
        bucket.province_code,
        bucket.g,
        bucket.yy,
    )


async def fill(su: asyncpg.Connection, bucket: Bucket, issued: int, version: int = 1) -> bytes:
    stored = os.urandom(32)
    await su.execute(
        "INSERT INTO pin_buckets (province_code, g, yy, key, issued, key_version) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        bucket.province_code, bucket.g, bucket.yy, stored, issued, version,
    )  # fmt: skip
    return stored


async def test_reserve_makes_a_bucket_keyed_with_the_secret_and_counts_on(private_rt, private_su):
    bucket = Bucket("001", 2, 24)
    first, key = await pins.reserve(private_rt, bucket, 3, secret=SECRET)
    row = await bucket_row(private_su, bucket)
    assert (first, row["issued"], row["key_version"]) == (0, 3, 1)
    assert key == bucket_key(bytes(row["key"]), 1, SECRET) != bytes(row["key"])
    assert await pins.reserve(private_rt, bucket, 1, secret=SECRET) == (3, key)
    assert await pins.reserve(private_rt, bucket, 5, secret=SECRET) == (4, key)
    assert (await bucket_row(private_su, bucket))["issued"] == 9
    with pytest.raises(PinSecretMissing):
        await pins.reserve(private_rt, bucket, 1, secret=None)


async def test_reserve_uses_a_stored_key_as_it_is(private_rt, private_su):
    bucket = Bucket("002", 1, 99)
    stored = await fill(private_su, bucket, 10, version=0)
    assert await pins.reserve(private_rt, bucket, 2, secret=None) == (10, stored)


async def test_reserve_near_the_end_gives_what_fits_or_none(private_rt, private_su):
    bucket = Bucket("004", 3, 1)
    await fill(private_su, bucket, BUCKET_SIZE - 2)
    assert await pins.reserve(private_rt, bucket, 3, secret=SECRET) is None
    assert (await bucket_row(private_su, bucket))[
        "issued"
    ] == BUCKET_SIZE - 2  # a refusal takes nothing
    first, _ = await pins.reserve(private_rt, bucket, 2, secret=SECRET)
    assert first == BUCKET_SIZE - 2
    assert await pins.reserve(private_rt, bucket, 1, secret=SECRET) is None


async def test_reserve_many_reserves_each_bucket_and_leaves_out_full_ones(private_rt, private_su):
    fresh, used, full = Bucket("006", 0, 50), Bucket("008", 1, 51), Bucket("010", 0, 52)
    await fill(private_su, used, 7)
    await fill(private_su, full, BUCKET_SIZE - 1)
    got = await pins.reserve_many(private_rt, {full: 2, used: 3, fresh: 4}, secret=SECRET)
    assert set(got) == {fresh, used}
    assert got[fresh][0] == 0 and got[used][0] == 7
    for bucket in (fresh, used):
        row = await bucket_row(private_su, bucket)
        assert got[bucket][1] == bucket_key(bytes(row["key"]), row["key_version"], SECRET)
    assert [(await bucket_row(private_su, b))["issued"] for b in (fresh, used, full)] == [
        4,
        10,
        BUCKET_SIZE - 1,
    ]
    assert await pins.reserve_many(private_rt, {}, secret=SECRET) == {}


async def test_check_secret_records_the_first_and_refuses_another(private_rt, private_su):
    await pins.check_secret(private_rt, SECRET)
    await pins.check_secret(private_rt, SECRET)  # the same secret again: fine
    assert bytes(await private_su.fetchval("SELECT fingerprint FROM pin_key_secret")) == (
        secret_fingerprint(SECRET)
    )
    with pytest.raises(pins.SecretMismatch):
        await pins.check_secret(private_rt, os.urandom(32))
    assert await private_su.fetchval("SELECT count(*) FROM pin_key_secret") == 1


async def test_counter_ranges_reserve_ahead_and_hand_out_one_at_a_time(private_db, private_su):
    pool = await asyncpg.create_pool(private_db.runtime, min_size=1, max_size=2)
    try:
        ranges = pins.CounterRanges(pool, size=4)
        ranges.secret = SECRET
        bucket = Bucket("011", 1, 77)
        taken = [await ranges.take(bucket) for _ in range(5)]
        assert [t[0] for t in taken if t] == [0, 1, 2, 3, 4]
        assert len({t[1] for t in taken if t}) == 1
        assert (await bucket_row(private_su, bucket))["issued"] == 8  # two ranges of four
        # Another process reserved from the same bucket meanwhile: no value is given twice.
        other = pins.CounterRanges(pool, size=4)
        other.secret = SECRET
        assert await other.take(bucket) == (8, taken[0][1])
        assert [(await ranges.take(bucket))[0] for _ in range(3)] == [5, 6, 7]

        near_end = Bucket("012", 0, 78)
        await fill(private_su, near_end, BUCKET_SIZE - 2)
        assert [(await ranges.take(near_end))[0] for _ in range(2)] == [
            BUCKET_SIZE - 2,
            BUCKET_SIZE - 1,
        ]
        assert await ranges.take(near_end) is None
    finally:
        await pool.close()
