"""registry/db/changes.py against PostgreSQL, as the server's runtime role.

Feed positions are database-wide, so these tests work in a database of their own
(tests/db/conftest.py `private_db`), where no server's sequencer numbers events meanwhile.
Retention (`prune`) has its own tests in test_change_retention.py.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from registry.db import changes
from registry.db.changes import ChangeEvent, FeedPruned
from tests.db.conftest import connected
from tests.db.records import fresh_pin


async def record(conn: asyncpg.Connection, *events: tuple[int, str, str | None]) -> None:
    for kind, pin, new_pin in events:
        await conn.execute(
            "INSERT INTO change_events (type, pin, new_pin) VALUES ($1, $2, $3)", kind, pin, new_pin
        )


async def top(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(sequence), 0) FROM change_events"))


async def test_number_pending_numbers_committed_events_in_order_and_announces(
    private_rt, private_db
):
    listener = await asyncpg.connect(private_db.runtime)
    heard: list[str] = []
    await listener.add_listener("registry_feed", lambda *args: heard.append(args[3]))
    try:
        before = await top(private_rt)
        pins = [fresh_pin() for _ in range(3)]
        await record(private_rt, *((1, p, None) for p in pins))
        await changes.number_pending(private_rt)
        rows = await private_rt.fetch(
            "SELECT sequence, pin FROM change_events WHERE sequence > $1 ORDER BY id", before
        )
        assert [(r["sequence"], r["pin"]) for r in rows] == [
            (before + i, p) for i, p in enumerate(pins, start=1)
        ]
        assert not private_rt.is_in_transaction()
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.05)
        assert heard == [""]
        await changes.number_pending(
            private_rt
        )  # nothing pending: no position given, no announcement
        await asyncio.sleep(0.3)
        assert heard == [""] and await top(private_rt) == before + 3
    finally:
        await listener.close()


async def test_number_pending_skips_events_not_yet_committed(private_rt, private_db):
    async with connected(private_db.runtime) as writer:
        before = await top(private_rt)
        late = fresh_pin()
        async with writer.transaction():
            await record(writer, (3, late, None))
            early = fresh_pin()
            await record(private_rt, (2, early, None))
            await changes.number_pending(private_rt)
            assert await top(private_rt) == before + 1
        await changes.number_pending(private_rt)
        rows = await private_rt.fetch(
            "SELECT pin FROM change_events WHERE sequence > $1 ORDER BY sequence", before
        )
        assert [r["pin"] for r in rows] == [early, late]


async def test_read_pages_filters_and_fills_new_pin(private_rt, private_pool):
    after = await top(private_rt)
    a, b, c = fresh_pin(), fresh_pin(), fresh_pin()
    await record(private_rt, (1, a, None), (5, b, None), (4, b, c), (2, a, None), (5, c, None))
    await changes.number_pending(private_rt)
    events = await changes.read(private_pool, after, [], 10)
    assert [(e.sequence, e.type, e.pin, e.new_pin) for e in events] == [
        (after + 1, 1, a, ""),
        (after + 2, 5, b, ""),
        (after + 3, 4, b, c),
        (after + 4, 2, a, ""),
        (after + 5, 5, c, ""),
    ]
    assert all(isinstance(e, ChangeEvent) and e.time is not None for e in events)
    assert [e.sequence for e in await changes.read(private_pool, after, [], 2)] == [
        after + 1,
        after + 2,
    ]
    assert [e.sequence for e in await changes.read(private_pool, after + 2, [], 2)] == [
        after + 3,
        after + 4,
    ]
    assert [(e.sequence, e.pin) for e in await changes.read(private_pool, after, [5], 10)] == [
        (after + 2, b),
        (after + 5, c),
    ]
    assert [e.sequence for e in await changes.read(private_pool, after + 1, [5, 2], 2)] == [
        after + 2,
        after + 4,
    ]
    assert await changes.read(private_pool, after + 5, [], 10) == []
    assert await changes.read(private_pool, after, [6], 10) == []


async def test_read_skips_unnumbered_events(private_rt, private_pool):
    after = await top(private_rt)
    await record(private_rt, (1, fresh_pin(), None))
    assert await changes.read(private_pool, after, [], 10) == []


async def test_positions_continue_after_the_horizon_and_old_cursors_are_refused(
    private_rt, private_pool, private_db
):
    await changes.number_pending(private_rt)
    assert await changes.horizon(private_rt) == await changes.horizon(private_pool) == 0
    newest = await top(private_rt)
    owner = await asyncpg.connect(private_db.superuser)
    try:  # as retention leaves it after pruning positions beyond the newest kept event
        await owner.execute("UPDATE change_feed_horizon SET pruned_through = $1", newest + 100)
    finally:
        await owner.close()
    assert await changes.horizon(private_rt) == newest + 100
    pin = fresh_pin()
    await record(private_rt, (1, pin, None))
    await changes.number_pending(private_rt)
    assert await top(private_rt) == newest + 101  # never a position at or below the horizon
    with pytest.raises(FeedPruned) as pruned:
        await changes.read(private_pool, newest, [], 10)
    assert pruned.value.pruned_through == newest + 100
    with pytest.raises(FeedPruned):
        await changes.read(private_pool, newest + 99, [3], 10)  # even when no event would match
    at_horizon = await changes.read(private_pool, newest + 100, [], 10)
    assert [(e.sequence, e.pin) for e in at_horizon] == [(newest + 101, pin)]
