"""The change feed's moving parts in each server: the sequencer and the wake-up of watchers.

One listener connection per server hears `registry_changes` (an event was committed, from the
triggers of migration 0007) and `registry_feed` (a sequencer numbered events). On the first it
runs the sequencer (several servers take turns under an advisory lock; one of them numbers the
event); on the second it wakes every WatchChanges stream of this server, which then reads what
is new. A safety-net pass every second covers notifications lost while reconnecting, so a new
event reaches watchers within about a second even then, and within milliseconds normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from registry.db import changes
from registry.db.pool import Database

log = logging.getLogger(__name__)

SAFETY_NET_S = 1.0


class ChangeFeed:
    """Numbers committed events and tells watchers when there are new ones."""

    def __init__(self, db: Database):
        self._db = db
        self._listener: asyncpg.Connection | None = None
        self._sequencer: asyncpg.Connection | None = None
        self._pending = asyncio.Event()
        self._news = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening and sequencing in the background."""
        self._task = asyncio.create_task(self._run(), name="change-feed")

    def marker(self) -> asyncio.Event:
        """Return the event set at the next announcement; take it BEFORE reading the feed."""
        return self._news

    async def wait_for_news(self, marker: asyncio.Event, timeout_s: float = SAFETY_NET_S) -> None:
        """Return once events were numbered since `marker` was taken (or after timeout_s)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await marker.wait()

    def _announce(self) -> None:
        # Every waiter holds the current event; replace it so later waits block again.
        news, self._news = self._news, asyncio.Event()
        news.set()

    async def _run(self) -> None:
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SAFETY_NET_S):
                        await self._pending.wait()
                self._pending.clear()
                await self._number()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change feed sequencing failed: %s", type(exc).__name__)
                await self._drop()
                await asyncio.sleep(SAFETY_NET_S)

    async def _number(self) -> None:
        if self._sequencer is None or self._sequencer.is_closed():
            self._sequencer = await self._db.connect_one("citizen-registry-sequencer")
        if await changes.number_pending(self._sequencer):
            self._announce()  # at once, without waiting for our own registry_feed

    async def _listen(self) -> None:
        await self._drop()
        self._listener = await self._db.connect_one("citizen-registry-feed")
        await self._listener.add_listener("registry_changes", self._on_change)
        await self._listener.add_listener("registry_feed", self._on_feed)

    def _on_change(self, *_: object) -> None:
        self._pending.set()

    def _on_feed(self, *_: object) -> None:
        self._announce()

    async def _drop(self) -> None:
        for conn in (self._listener, self._sequencer):
            if conn is not None:
                conn.terminate()
        self._listener = self._sequencer = None

    async def close(self) -> None:
        """Stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()
