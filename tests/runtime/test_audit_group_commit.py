"""registry/runtime/audit_writer.py against PostgreSQL, in a database of its own: when the
writer refuses, how groups are cut, what a cancelled call's entries become, and how it comes
back after losing its connection. (Several writers on one chain: test_audit_writers.py; the
entries calls write: tests/grpc/test_audit_entries.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from registry.db.pool import Database
from registry.rules.audit import Entry
from registry.rules.errors import Code
from registry.runtime import audit_writer
from registry.runtime.audit_writer import MAX_GROUP, AuditUnavailable, AuditWriter
from tests.db.conftest import PrivateDatabase, connected, private_db
from tests.runtime.audit_chain import _walk

__all__ = ["private_db"]


@pytest.fixture
async def database(private_db: PrivateDatabase) -> AsyncIterator[Database]:
    db = await Database.connect(private_db.runtime, min_size=1, max_size=2)
    try:
        yield db
    finally:
        await db.close()


def entries(n: int, tag: str = "t") -> list[Entry]:
    now = datetime.now(UTC)
    return [
        Entry(now, "audit-tests", "/test/Write", (f"{i:012d}",), "OK", tag, f"{tag}-{i}")
        for i in range(n)
    ]


async def stored(private_db: PrivateDatabase, *tags: str) -> list[str]:
    """The request ids of the entries with these tags (purposes), in chain order. The module's
    tests share their database: each writes tags of its own."""
    async with connected(private_db.superuser) as su:
        rows = await su.fetch(
            "SELECT request_id FROM audit_log WHERE purpose = ANY($1) ORDER BY seq", list(tags)
        )
    return [r["request_id"] for r in rows]


async def audit_backends(private_db: PrivateDatabase) -> int:
    """How many connections audit writers hold open on the module's database."""
    async with connected(private_db.superuser) as su:
        return int(
            await su.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'citizen-registry-audit' AND datname = current_database()"
            )
        )


async def blocked_writer(su: asyncpg.Connection) -> int:
    """Wait (up to 5 s) until a writer's group waits for a lock the test holds; its backend."""
    for _ in range(500):
        pid = await su.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = "
            "'citizen-registry-audit' AND datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        if pid:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the writer's group never reached the locked head")


def test_the_refusal_is_unavailable_naming_the_audit_and_when_to_retry():
    error = AuditUnavailable()
    assert (error.code, error.reason, error.message, error.retry_after_s) == (
        Code.UNAVAILABLE,
        "AUDIT_UNAVAILABLE",
        "the access could not be recorded in the audit log; retry shortly",
        1.0,
    )


async def test_nothing_is_accepted_before_start_or_after_close(database, private_db):
    writer = AuditWriter(database)
    with pytest.raises(AuditUnavailable):
        await writer.record(entries(1))
    writer.start()
    await writer.record(entries(1, "first"))  # the first group, on a connection of its own
    await writer.close()
    with pytest.raises(AuditUnavailable):
        await writer.record(entries(1))
    writer.submit(entries(1, "late"))  # dropped: nothing may be pending after close
    assert writer.pending_entries == 0
    assert await stored(private_db, "first", "late") == ["first-0"]
    assert (writer.groups, writer.entries) == (1, 1)
    walk = await _walk(private_db.superuser)
    assert walk.intact, walk.problem


async def test_a_backlog_is_cut_at_max_group_entries_never_inside_a_call(database, private_db):
    assert MAX_GROUP == 5_000
    writer = AuditWriter(database)
    half = MAX_GROUP // 2
    # Queued before the writer runs: 2,500 + 2,500 fill a group exactly; 2,500 + 2,501 do not;
    # 6,000 from one call are written together.
    for size, tag in ((half, "a"), (half, "b"), (half, "c"), (half + 1, "d"), (6_000, "e")):
        writer.submit(entries(size, tag))
    assert writer.pending_entries == 4 * half + 1 + 6_000
    writer.start()
    await writer.close()
    assert (writer.groups, writer.entries) == (4, 4 * half + 1 + 6_000)
    async with connected(private_db.superuser) as su:
        groups = await su.fetch(
            "SELECT purpose, min(xmin::text) AS tx FROM audit_log "
            "WHERE purpose = ANY('{a,b,c,d,e}') GROUP BY purpose"
        )
    tx = {r["purpose"]: r["tx"] for r in groups}
    assert tx["a"] == tx["b"] and len({tx["b"], tx["c"], tx["d"], tx["e"]}) == 4
    walk = await _walk(private_db.superuser)
    assert walk.intact, walk.problem


async def test_a_cancelled_caller_s_entries_are_written_with_the_group(database, private_db):
    writer = AuditWriter(database)
    writer.start()
    try:
        gone = asyncio.create_task(writer.record(entries(1, "gone")))
        await asyncio.sleep(0)
        gone.cancel()
        await writer.record(entries(1, "stays"))
    finally:
        await writer.close()
    assert sorted(await stored(private_db, "gone", "stays")) == ["gone-0", "stays-0"]


async def test_a_cut_connection_is_reopened_and_the_chain_continues_after_another_writer(
    database, private_db
):
    writer = AuditWriter(database)
    writer.start()
    try:
        await writer.record(entries(1, "before"))
        async with connected(private_db.superuser) as su:
            # The writer's own connection is cut, and meanwhile another writer appends: the
            # link the writer remembers is no longer the chain's last.
            await su.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'citizen-registry-audit' "
                "AND datname = current_database()"
            )
        other = AuditWriter(database)
        other.start()
        await other.record(entries(1, "other"))
        await other.close()
        await writer.record(entries(1, "after"))
    finally:
        await writer.close()
    assert await stored(private_db, "before", "other", "after") == [
        "before-0",
        "other-0",
        "after-0",
    ]
    walk = await _walk(private_db.superuser)
    assert walk.intact, walk.problem


async def test_a_group_the_database_refuses_fails_every_call_in_it_then_writing_resumes(
    database, private_db, caplog
):
    writer = AuditWriter(database)
    writer.start()
    try:
        await writer.record(entries(1, "ok1"))
        async with connected(private_db.superuser) as su:
            await su.execute("REVOKE INSERT ON audit_log FROM registry_runtime")
            try:
                refused = await asyncio.gather(
                    writer.record(entries(1, "no")),
                    writer.record(entries(2, "no")),
                    return_exceptions=True,
                )
            finally:
                await su.execute("GRANT INSERT ON audit_log TO registry_runtime")
        assert [type(r) for r in refused] == [AuditUnavailable, AuditUnavailable]
        await writer.record(entries(1, "ok2"))
        assert await audit_backends(private_db) == 1  # the failed group's connection was closed
    finally:
        await writer.close()
    assert await stored(private_db, "ok1", "no", "ok2") == ["ok1-0", "ok2-0"]
    assert "audit group of 3 not written" in [r.getMessage() for r in caplog.records]
    walk = await _walk(private_db.superuser)
    assert walk.intact, walk.problem


async def test_calls_arriving_together_share_one_commit(database, private_db):
    writer = AuditWriter(database)
    writer.start()
    try:
        await writer.record(entries(1, "warm"))
        await asyncio.gather(*(writer.record(entries(1, f"c{i}")) for i in range(20)))
    finally:
        await writer.close()
    # The lone first call at once; the twenty that arrived within the group interval together.
    assert writer.groups == 2 and writer.entries == 21


async def test_calls_never_wait_for_a_writer_that_stopped(database, private_db):
    writer = AuditWriter(database)
    writer.start()
    waiting = asyncio.create_task(writer.record(entries(1, "stopped")))
    await asyncio.sleep(0)
    assert writer._task is not None
    writer._task.cancel()  # the writer's task ends (here cancelled; a bug would do the same)
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(AuditUnavailable):
        await writer.record(entries(1, "stopped"))
    assert await stored(private_db, "stopped") == []


async def test_calls_of_a_group_in_flight_never_wait_for_a_writer_that_stopped(
    database, private_db
):
    writer = AuditWriter(database)
    writer.start()
    await writer.record(entries(1, "warm"))  # the writer's connection is open
    async with connected(private_db.superuser) as su, su.transaction():
        # Hold the chain's head: the writer's next group blocks inside its commit.
        await su.execute("SELECT 1 FROM audit_head FOR UPDATE")
        writer.submit(entries(1, "in-flight"))  # a cancelled call's: no one waits for these
        waiting = asyncio.create_task(writer.record(entries(1, "in-flight")))
        await blocked_writer(su)
        assert writer._task is not None
        writer._task.cancel()
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(waiting, 5)
    await writer.close()


async def test_a_lone_call_is_written_at_once_and_a_closing_writer_reports_no_failure(
    database, private_db, caplog
):
    caplog.set_level(logging.INFO, logger="registry.runtime.audit_writer")
    commits = REGISTRY.get_sample_value("registry_audit_group_commit_seconds_count") or 0.0
    seconds = REGISTRY.get_sample_value("registry_audit_group_commit_seconds_sum") or 0.0
    writer = AuditWriter(database)
    writer.start()
    started = asyncio.get_running_loop().time()
    for i in range(10):  # one after another: groups start at most every 20 ms
        await asyncio.wait_for(writer.record(entries(1, f"seq{i}")), 5)
    elapsed = asyncio.get_running_loop().time() - started
    await writer.close()
    assert writer.groups == 10
    assert elapsed < 5.0, elapsed  # about 0.2 s; far above what any load adds
    assert "audit writer stopped" not in caplog.text
    assert "audit writer: 10 entries in 10 groups" in [r.getMessage() for r in caplog.records]
    # Each commit is timed (registry_audit_group_commit_seconds), each well under a second.
    assert REGISTRY.get_sample_value("registry_audit_group_commit_seconds_count") == commits + 10
    spent = REGISTRY.get_sample_value("registry_audit_group_commit_seconds_sum") - seconds
    assert 0 < spent < elapsed
    assert await audit_backends(private_db) == 0  # close() closed its connection


async def test_a_connection_lost_during_a_group_fails_its_calls_then_writing_resumes(
    database, private_db, caplog
):
    caplog.set_level(logging.WARNING, logger="registry.runtime.audit_writer")
    writer = AuditWriter(database)
    writer.start()
    try:
        await writer.record(entries(1, "lost-before"))
        async with connected(private_db.superuser) as su, su.transaction():
            await su.execute("SELECT 1 FROM audit_head FOR UPDATE")
            waiting = [
                asyncio.create_task(writer.record(entries(1, "lost"))),
                asyncio.create_task(writer.record(entries(1, "lost"))),
            ]
            await su.execute("SELECT pg_terminate_backend($1)", await blocked_writer(su))
            results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        assert [type(r) for r in results] == [AuditUnavailable, AuditUnavailable]
        await writer.record(entries(1, "lost-after"))  # reconnected, the head read again
    finally:
        await writer.close()
    assert await stored(private_db, "lost-before", "lost", "lost-after") == [
        "lost-before-0",
        "lost-after-0",
    ]
    assert [r.getMessage().split(": ")[0] for r in caplog.records] == [
        "audit group of 2 not written"
    ]
    walk = await _walk(private_db.superuser)
    assert walk.intact, walk.problem


async def test_calls_are_written_in_the_order_they_arrived(database, private_db):
    writer = AuditWriter(database)
    # 2,500 + 2,499 leave room for 1 more: the third call (2,501) must still wait for the
    # next group, and the fourth (1 entry) must not overtake it.
    for size, tag in ((2_500, "o1"), (2_499, "o2"), (2_501, "o3"), (1, "o4")):
        writer.submit(entries(size, tag))
    writer.start()
    await writer.close()
    async with connected(private_db.superuser) as su:
        order = [
            r["purpose"]
            for r in await su.fetch(
                "SELECT purpose, min(seq) AS first FROM audit_log "
                "WHERE purpose = ANY('{o1,o2,o3,o4}') GROUP BY purpose ORDER BY first"
            )
        ]
    assert order == ["o1", "o2", "o3", "o4"]
    assert writer.groups == 2


async def test_calls_arriving_within_the_group_interval_share_the_next_commit(
    database, monkeypatch
):
    # A long interval, so that how fast the machine commits does not decide the test.
    monkeypatch.setattr(audit_writer, "MIN_GROUP_INTERVAL_S", 0.5)
    writer = AuditWriter(database)
    writer.start()
    try:
        await writer.record(entries(1, "gather0"))  # a group starts: the next waits for 0.5 s
        first = asyncio.create_task(writer.record(entries(1, "gather1")))
        await asyncio.sleep(0.05)  # the writer is already waiting for the interval to pass
        second = asyncio.create_task(writer.record(entries(1, "gather2")))
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert writer.groups == 2  # the first call alone, then both late ones together
        # Closing does not wait for the interval: what is pending is written at once.
        await writer.record(entries(1, "gather3"))
        writer.submit(entries(1, "gather4"))
        closing = asyncio.get_running_loop().time()
    finally:
        await writer.close()
    assert asyncio.get_running_loop().time() - closing < 0.4
    assert writer.groups == 4
