"""In-memory copies of small, hot tables, kept fresh from the database.

Agencies and keys are read on every call, so the server holds a snapshot and replaces it
whole when the database says they changed (LISTEN registry_agencies, fired by a trigger), with
a periodic reload as a safety net for notifications lost while the listener was reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from registry.db import agencies, prefixes
from registry.db.pool import Database
from registry.rules.pin import PrefixTable
from registry.rules.tokens import DirectorySnapshot, valid_agency_id, valid_kid

log = logging.getLogger(__name__)

_CHANNEL = "registry_agencies"
_LOOKUPS_PER_S = 20


class AgencyDirectory:
    """The current snapshot of agencies and their keys."""

    def __init__(self, db: Database, refresh_s: float = 5.0):
        self._db = db
        self._refresh_s = refresh_s
        self.snapshot = DirectorySnapshot({}, {})
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._missing: dict[tuple[str, str], float] = {}
        self._window_start = 0.0
        self._window_lookups = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the snapshot and keep it fresh in the background."""
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="agency-directory")

    async def reload(self) -> None:
        """Replace the snapshot with the database's current agencies and keys."""
        async with self._lock:
            rows = await agencies.list_all(self._db.pool)
            self.snapshot = DirectorySnapshot.from_agencies(rows)

    async def refresh_for_unknown_key(self, agency_id: str, kid: str) -> bool:
        """Reload if (agency_id, kid) now exists in the database; tell whether it does.

        Called when a token names a key the snapshot lacks, so an agency registered a moment
        ago works at once, before its NOTIFY is processed. Bounded: a (agency, kid) found
        missing is not looked up again for a second, and at most _LOOKUPS_PER_S lookups run
        per second, so a flood of invented key ids cannot load the database. Ids that no
        agency or key can have (NUL, control characters, overlong) are never looked up.
        """
        if not (valid_agency_id(agency_id) and valid_kid(kid)):
            return False
        now = time.monotonic()
        if self._missing.get((agency_id, kid), 0.0) > now:
            return False
        if now - self._window_start >= 1.0:
            self._window_start, self._window_lookups = now, 0
        if self._window_lookups >= _LOOKUPS_PER_S:
            return False
        self._window_lookups += 1
        if not await agencies.key_exists(self._db.pool, agency_id, kid):
            if len(self._missing) > 10_000:
                self._missing = {k: t for k, t in self._missing.items() if t > now}
            self._missing[(agency_id, kid)] = now + 1.0
            return False
        await self.reload()
        return True

    async def _run(self) -> None:
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                    await self.reload()  # changes made while we were not listening
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._refresh_s):
                        await self._wake.wait()
                self._wake.clear()
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("agency directory refresh failed: %s", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        if self._listener is not None:
            self._listener.terminate()
        self._listener = await asyncpg.connect(self._db.dsn, timeout=5.0)
        await self._listener.add_listener(_CHANNEL, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            self._listener.terminate()


class PrefixCache:
    """The PIN province-code table, re-read periodically (operators change it rarely)."""

    def __init__(self, db: Database, refresh_s: float = 30.0):
        self._db = db
        self._refresh_s = refresh_s
        self.table = PrefixTable.load_default()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the table and keep it fresh in the background."""
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="prefix-cache")

    async def reload(self) -> None:
        """Replace the table with the database's current one."""
        self.table = await prefixes.load(self._db.pool)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.reload()
            except Exception as exc:
                log.warning("prefix table refresh failed: %s", type(exc).__name__)

    async def close(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
