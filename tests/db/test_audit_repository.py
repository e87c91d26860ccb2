"""registry/db/audit.py against PostgreSQL, as the server's runtime role.

The chain and the checkpoints are whole-table things, so these tests work in a database of
their own (tests/db/conftest.py `private_db`), where no server appends meanwhile.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from registry.db import audit
from registry.rules.audit import GENESIS, Entry, link, walk
from tests.db.conftest import connected
from tests.db.records import fresh_pin

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def entry(*pins: str, agency: str = "a1", n: int = 0) -> Entry:
    return Entry(T0 + timedelta(seconds=n), agency, "GetCitizen", pins, "OK", "kiểm tra", f"r{n}")


async def all_entries(conn: asyncpg.Connection) -> list[tuple[int, Entry, bytes]]:
    async with conn.transaction():
        return [e async for e in audit.entries(conn, prefetch=2)]


async def test_append_chains_entries_and_moves_the_head(private_rt):
    start = await audit.head(private_rt)
    if start[0] == 0:
        assert start == (0, GENESIS)  # the chain's first link: nothing before it
    pin = fresh_pin()
    batch = [entry(pin, n=1), entry(n=2), entry(pin, "012345678901", n=3)]
    seq, last = await audit.append(private_rt, batch, None)
    assert seq == start[0] + 3
    assert await audit.head(private_rt) == (seq, last)
    expected = start[1]
    for offset, e in enumerate(batch, start=1):
        expected = link(expected, start[0] + offset, e)
        assert await audit.hash_at(private_rt, start[0] + offset) == expected
    assert last == expected
    stored = [(s, e) for s, e, _ in await all_entries(private_rt) if s > start[0]]
    assert stored == list(enumerate(batch, start=start[0] + 1))
    assert stored[1][1].pins == ()  # no PINs: an empty array, not ['']
    assert await audit.hash_at(private_rt, seq + 1) is None


async def test_append_with_a_stale_head_chains_onto_the_real_one(private_rt, private_db):
    mine = await audit.head(private_rt)
    async with connected(private_db.runtime) as other:
        theirs = await audit.append(other, [entry(n=10), entry(n=11)], None)
    seq, last = await audit.append(private_rt, [entry(n=12)], mine)  # `mine` is out of date
    assert seq == theirs[0] + 1 == mine[0] + 3
    assert last == link(theirs[1], seq, entry(n=12))
    rows = await all_entries(private_rt)
    assert [s for s, _, _ in rows] == list(range(1, seq + 1))
    assert walk(rows, await audit.head(private_rt)).intact


async def test_concurrent_appends_lose_nothing(private_rt, private_db):
    others = [await asyncpg.connect(private_db.runtime) for _ in range(3)]
    try:
        start = await audit.head(private_rt)
        await asyncio.gather(
            *(
                audit.append(c, [entry(n=20 + i), entry(n=30 + i)], start)
                for i, c in enumerate(others)
            )
        )
    finally:
        for c in others:
            await c.close()
    assert (await audit.head(private_rt))[0] == start[0] + 6
    assert walk(await all_entries(private_rt), await audit.head(private_rt)).intact


async def test_history_lists_a_citizens_entries_newest_first(private_rt, private_db):
    async with connected(private_db.owner) as owner:
        await owner.execute(
            "INSERT INTO agencies (id, name, kind, confidential) VALUES "
            "('hist-open', 'Công an Hà Nội', 'POLICE', false), "
            "('hist-secret', 'Cơ quan X', 'OTHER', true)"
        )
    pin, someone = fresh_pin(), fresh_pin()
    batch = [
        entry(pin, agency="hist-open", n=1),
        entry(someone, agency="hist-open", n=2),
        entry(someone, pin, agency="hist-secret", n=3),
        entry(pin, agency="unregistered", n=4),
        entry(pin, agency="hist-open", n=5),
    ]
    seq, _ = await audit.append(private_rt, batch, None)
    first = seq - 4
    pool = await asyncpg.create_pool(private_db.runtime, min_size=1, max_size=2)
    try:
        page = await audit.history(pool, pin, None, 10)
        assert [i.seq for i in page] == [seq, seq - 1, seq - 2, first]
        newest, unregistered, secret = page[0], page[1], page[2]
        assert (newest.agency_id, newest.agency_name, newest.confidential) == (
            "hist-open",
            "Công an Hà Nội",
            False,
        )
        assert (newest.method, newest.purpose, newest.outcome, newest.time) == (
            "GetCitizen",
            "kiểm tra",
            "OK",
            T0 + timedelta(seconds=5),
        )
        assert (secret.agency_name, secret.confidential) == ("Cơ quan X", True)
        assert (unregistered.agency_name, unregistered.confidential) == ("", False)
        # Paging: older than a position, at most `limit`.
        assert [i.seq for i in await audit.history(pool, pin, seq - 1, 2)] == [seq - 2, first]
        assert [i.seq for i in await audit.history(pool, pin, first, 10)] == []
        assert await audit.history(pool, fresh_pin(), None, 10) == []
    finally:
        await pool.close()


async def test_checkpoints_are_stored_once_and_listed_by_position(private_rt):
    seq, last = await audit.append(private_rt, [entry(n=i) for i in range(3)], None)
    assert await audit.add_checkpoint(private_rt, seq - 2, bytes([1]) * 32, T0, "jws-a")
    assert await audit.add_checkpoint(private_rt, seq, last, T0 + timedelta(minutes=1), "jws-c")
    assert await audit.add_checkpoint(private_rt, seq - 1, bytes([2]) * 32, T0, "jws-b")
    # One per position: a second signer's checkpoint of the same head is not stored.
    assert not await audit.add_checkpoint(private_rt, seq, bytes(32), T0, "jws-other")

    latest = await audit.latest_checkpoints(private_rt, 2)
    assert [(c.seq, c.jws) for c in latest] == [(seq, "jws-c"), (seq - 1, "jws-b")]
    assert latest[0] == audit.StoredCheckpoint(seq, last, T0 + timedelta(minutes=1), "jws-c")
    tokens = await audit.checkpoint_tokens(private_rt)
    assert tokens[-3:] == ["jws-a", "jws-b", "jws-c"]
    assert len(await audit.latest_checkpoints(private_rt, 100)) == len(tokens)


async def test_one_checkpoint_signer_at_a_time(private_rt, private_db):
    async with connected(private_db.runtime) as other:
        async with private_rt.transaction():
            assert await audit.lock_checkpointing(private_rt)
            async with other.transaction():
                assert not await audit.lock_checkpointing(other)
        # Released with the transaction.
        async with other.transaction():
            assert await audit.lock_checkpointing(other)
