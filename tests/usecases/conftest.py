"""Fixtures of the use-case tests: the repository tests' connections (tests/db/conftest.py)
and the server's database handle as the runtime role."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from registry.db.pool import Database
from tests.conftest import SESSION_PIN_SECRET
from tests.db.conftest import private_db, rt, su

__all__ = ["database", "private_db", "rt", "su"]


@pytest.fixture
async def database(runtime_dsn: str) -> AsyncIterator[Database]:
    """What a server process holds: its pools on the session database, the PIN secret set."""
    db = await Database.connect(runtime_dsn, min_size=1, max_size=3)
    try:
        await db.use_pin_secret(SESSION_PIN_SECRET)
        yield db
    finally:
        await db.close()
