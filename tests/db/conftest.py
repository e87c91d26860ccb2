"""Fixtures of the repository tests (registry/db): a connection as the server's runtime role,
and migrated databases of a module's own for tests that need a whole table to themselves (the
audit chain, the change feed's positions, the PIN secret's fingerprint, the gauges)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

from registry.db.migrate import migrate
from registry.embedded import OWNER_ROLE, EmbeddedCluster
from tests.conftest import run


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the length of a block, closed whatever happens."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def in_database(dsn: str, name: str) -> str:
    """The same role's DSN for another database of the cluster."""
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


@dataclass(frozen=True)
class PrivateDatabase:
    """A migrated database of one test module: a DSN per role."""

    superuser: str
    """For setting up and checking state behind the server's back."""
    owner: str
    """What migrations and operator commands connect as."""
    runtime: str
    """What the server connects as."""


@pytest.fixture(scope="module")
def private_db(cluster: EmbeddedCluster, dsn: str) -> Iterator[PrivateDatabase]:
    """A database of this module's own, owned by the owner role and migrated by it."""
    name = f"repo_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        async with connected(dsn) as conn:
            await conn.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
        async with connected(in_database(cluster.owner_dsn, name)) as owner:
            await migrate(owner)

    async def drop() -> None:
        async with connected(dsn) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    run(create())
    try:
        yield PrivateDatabase(
            superuser=in_database(dsn, name),
            owner=in_database(cluster.owner_dsn, name),
            runtime=in_database(cluster.runtime_dsn, name),
        )
    finally:
        run(drop())


@pytest.fixture
async def rt(runtime_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session database as the server's runtime role."""
    async with connected(runtime_dsn) as conn:
        yield conn


@pytest.fixture
async def su(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the session database, for setting up and checking rows."""
    async with connected(dsn) as conn:
        yield conn


@pytest.fixture
async def private_rt(private_db: PrivateDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's own database as the server's runtime role."""
    async with connected(private_db.runtime) as conn:
        yield conn


@pytest.fixture
async def private_su(private_db: PrivateDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the module's own database."""
    async with connected(private_db.superuser) as conn:
        yield conn


@pytest.fixture
async def private_owner(private_db: PrivateDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's own database as the owner role (operator commands)."""
    async with connected(private_db.owner) as conn:
        yield conn


@pytest.fixture
async def private_pool(private_db: PrivateDatabase) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the module's own database as the runtime role."""
    pool = await asyncpg.create_pool(private_db.runtime, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
