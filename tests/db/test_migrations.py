"""Migrations: applied in order, once, atomically, under a lock; edits are refused."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from registry.db.migrate import MigrationError, load_migrations, migrate
from registry.embedded import EmbeddedCluster
from registry.rules.pin import PrefixTable
from tests.db.conftest import connected


async def _fresh_database(cluster: EmbeddedCluster) -> str:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    async with connected(cluster.dsn) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.dsn.rsplit("/", 1)[0] + "/" + name


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql, encoding="utf-8")


async def test_all_migrations_apply_to_an_empty_database_once(cluster):
    dsn = await _fresh_database(cluster)
    async with connected(dsn) as conn:
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        assert await migrate(conn) == []  # second run: nothing to do
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in load_migrations()
        ]
        for table in ("citizens", "pin_buckets", "pin_prefixes", "agencies", "idempotency_keys"):
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)


async def test_seeded_prefixes_match_the_packaged_table(dsn):
    async with connected(dsn) as conn:
        rows = await conn.fetch("SELECT code, name, kind, valid_from, valid_to FROM pin_prefixes")
    packaged = PrefixTable.load_default()
    seeded = {r["code"]: (r["name"], r["kind"], r["valid_from"], r["valid_to"]) for r in rows}
    expected = {c: (p.name, p.kind, p.valid_from, p.valid_to) for c, p in packaged.items()}
    # Tests may add codes of their own to the shared database; the seed must all be there.
    assert {c: seeded[c] for c in expected} == expected
    assert len(expected) == 63


async def test_concurrent_migrators_apply_each_migration_exactly_once(cluster, tmp_path):
    dsn = await _fresh_database(cluster)
    # A slow migration widens the window in which a racing second server would apply it too.
    _write(tmp_path, "0001_slow.sql", "SELECT pg_sleep(0.5); CREATE TABLE once (id int);")
    _write(tmp_path, "0002_more.sql", "INSERT INTO once VALUES (1);")
    migrations = load_migrations(tmp_path)
    conns = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c, migrations) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 2]
        assert await conns[0].fetchval("SELECT count(*) FROM once") == 1
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_applied_migration_is_refused(cluster, tmp_path):
    dsn = await _fresh_database(cluster)
    _write(tmp_path, "0001_base.sql", "CREATE TABLE base (id int);")
    async with connected(dsn) as conn:
        await migrate(conn, load_migrations(tmp_path))
        _write(tmp_path, "0001_base.sql", "CREATE TABLE base (id bigint);")
        _write(tmp_path, "0002_next.sql", "CREATE TABLE next_one (id int);")
        with pytest.raises(MigrationError, match=r"0001_base was changed after it was applied"):
            await migrate(conn, load_migrations(tmp_path))
        # Refused before applying anything newer.
        assert not await conn.fetchval("SELECT to_regclass('next_one') IS NOT NULL")


async def test_a_failing_migration_leaves_nothing_behind(cluster, tmp_path):
    dsn = await _fresh_database(cluster)
    _write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    _write(tmp_path, "0002_bad.sql", "CREATE TABLE half (id int); SELECT * FROM no_such_table;")
    async with connected(dsn) as conn:
        with pytest.raises(MigrationError, match="0002_bad failed"):
            await migrate(conn, load_migrations(tmp_path))
        assert await conn.fetchval("SELECT to_regclass('ok') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('half') IS NOT NULL")
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in versions] == [1]


def test_migration_files_are_well_named_and_unique(tmp_path):
    _write(tmp_path, "1_bad.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    _write(tmp_path, "0001_a.sql", "SELECT 1;")
    _write(tmp_path, "0001_b.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(tmp_path)
