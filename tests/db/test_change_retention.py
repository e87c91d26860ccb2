"""Change-feed retention (issue 18 item 5): old events are pruned, positions never reused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from registry.db import changes
from registry.db.migrate import migrate
from tests.conftest import ServerThread, run, server_settings
from tests.db.conftest import connected


@pytest.fixture
def feed_db(cluster, dsn) -> Iterator[tuple[str, str]]:
    """A migrated database of its own: (superuser DSN, runtime DSN)."""
    name = f"feed_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with connected(dsn) as conn:
            await conn.execute(f'CREATE DATABASE "{name}" OWNER registry_owner')
        async with connected(cluster.owner_dsn.rsplit("/", 1)[0] + "/" + name) as owner:
            await migrate(owner)

    run(create())
    base = dsn.rsplit("/", 1)[0] + "/" + name
    yield base, cluster.runtime_dsn.rsplit("/", 1)[0] + "/" + name

    async def drop() -> None:
        async with connected(dsn) as conn:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    run(drop())


async def _seed(superuser: str, old: int, young: int, unnumbered_old: int = 0) -> None:
    async with connected(superuser) as conn:
        await conn.execute(
            "INSERT INTO change_events (sequence, type, pin, time) "
            "SELECT n, 1, lpad(n::text, 12, '0'), now() - "
            "  CASE WHEN n <= $1::int THEN interval '40 days' ELSE interval '1 minute' END "
            "FROM generate_series(1, $1::int + $2::int) n",
            old,
            young,
        )
        await conn.execute(
            "INSERT INTO change_events (type, pin, time) "
            "SELECT 1, '000000000000', now() - interval '50 days' FROM generate_series(1, $1::int)",
            unnumbered_old,
        )


async def _sequences(dsn: str) -> list[int | None]:
    async with connected(dsn) as conn:
        return [r[0] for r in await conn.fetch("SELECT sequence FROM change_events ORDER BY id")]


def test_runtime_role_prunes_old_numbered_events_in_order(feed_db):
    superuser, runtime = feed_db
    run(_seed(superuser, old=60, young=40, unnumbered_old=3))

    async def prune_all() -> list[int]:
        async with connected(runtime) as conn:
            removed = []
            while (n := await changes.prune(conn, keep_days=35, max_rows=25)) > 0:
                removed.append(n)
            return [*removed, await changes.horizon(conn)]

    *batches, horizon = run(prune_all())
    assert batches == [25, 25, 10] and horizon == 60
    left = run(_sequences(superuser))
    assert [s for s in left if s is not None] == list(range(61, 101))
    assert left.count(None) == 3  # unnumbered events are never pruned


def test_pruning_keeps_the_newest_and_positions_are_never_reused(feed_db):
    superuser, runtime = feed_db
    run(_seed(superuser, old=10, young=0))

    async def go() -> tuple[int, int, list[int | None]]:
        async with connected(runtime) as conn:
            removed = await changes.prune(conn, keep_days=35)
            horizon = await changes.horizon(conn)
            await conn.execute("INSERT INTO change_events (type, pin) VALUES (1, '000000000001')")
            await changes.number_pending(conn)
            return removed, horizon, await _sequences(superuser)

    removed, horizon, left = run(go())
    assert removed == 9 and horizon == 9
    assert left == [10, 11]  # the newest old event stays; the next position follows it


def test_the_runtime_role_cannot_prune_recent_events(feed_db):
    superuser, runtime = feed_db
    run(_seed(superuser, old=0, young=5))

    async def go() -> None:
        async with connected(runtime) as conn:
            with pytest.raises(asyncpg.RaiseError, match="at least one day"):
                await changes.prune(conn, keep_days=0.5)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM change_events")

    run(go())
    assert run(_sequences(superuser)) == [1, 2, 3, 4, 5]


def test_the_server_prunes_in_the_background(feed_db):
    superuser, runtime = feed_db
    run(_seed(superuser, old=30, young=5))
    srv = ServerThread(server_settings(change_prune_s=0.2), runtime).start()
    try:
        deadline = time.monotonic() + 30
        while run(_sequences(superuser))[0] != 31:
            assert time.monotonic() < deadline, "the server never pruned"
            time.sleep(0.1)
    finally:
        srv.stop()


def test_a_cursor_older_than_the_retained_events_is_out_of_range(feed_db, make_agency):
    """WatchChanges never skips pruned events silently: OUT_OF_RANGE names the oldest kept."""
    import grpc

    from registry.v1 import population_service_pb2 as pop_pb
    from registry.v1 import population_service_pb2_grpc as pop_grpc
    from tests.conftest import make_agency_factory, wait_serving
    from tests.helpers import decode

    superuser, runtime = feed_db
    run(_seed(superuser, old=30, young=5))
    watcher = make_agency_factory(superuser)()
    srv = ServerThread(server_settings(change_prune_s=0.2), runtime).start()
    try:
        wait_serving(srv.target)
        deadline = time.monotonic() + 30
        while run(_sequences(superuser))[0] != 31:
            assert time.monotonic() < deadline, "the server never pruned"
            time.sleep(0.1)
        with grpc.insecure_channel(srv.target) as channel:
            stub = pop_grpc.PopulationServiceStub(channel)
            for cursor in (0, 10, 29):
                stream = stub.WatchChanges(
                    pop_pb.WatchChangesRequest(after_sequence=cursor),
                    metadata=watcher.metadata(),
                    timeout=10,
                )
                try:
                    next(iter(stream))
                    raise AssertionError(f"cursor {cursor} was served across a gap")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.OUT_OF_RANGE
                    details = decode(exc)
                    assert details.reason == "CHANGES_PRUNED"
                    assert details.metadata["oldest_available_sequence"] == "31"
            # From the horizon on, the feed is whole.
            stream = stub.WatchChanges(
                pop_pb.WatchChangesRequest(after_sequence=30),
                metadata=watcher.metadata(),
                timeout=10,
            )
            got = []
            for answer in stream:
                got.append(answer.event.sequence)
                if len(got) == 5:
                    stream.cancel()
                    break
            assert got == [31, 32, 33, 34, 35]
    finally:
        srv.stop()
