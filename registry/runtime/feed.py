"""The change feed's moving parts in each server: the sequencer and the wake-up of watchers.

The server's calls that change the register wake this server's sequencer when they end
(`kick`, called by the call gate). The sequencer numbers the committed events (several servers
take turns under an advisory lock) at most every MIN_INTERVAL_S, and then `NOTIFY
registry_feed`. One listener connection per server hears `registry_feed` and wakes every
WatchChanges stream of this server, which then reads what is new; it also hears
`registry_changes`, which an operator may send by hand. A safety-net pass every second numbers
events written by anything else (an operator's SQL) and covers notifications lost while
reconnecting, so a new event reaches watchers within about a second even then, and within
milliseconds normally.

The writing transactions do not NOTIFY themselves (migration 0011): PostgreSQL serialises the
commits of transactions that NOTIFY, flushes included, which cost births a quarter of their
throughput.
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
# Numbering runs start at most this often: under load one run numbers the events of many
# calls (each run is a durable commit), and a lone event is still numbered at once.
MIN_INTERVAL_S = 0.05
# Events deleted per statement by the retention pruner: short transactions, small WAL bursts.
PRUNE_BATCH = 10_000


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

    async def prune_forever(self, keep_days: float, every_s: float) -> None:
        """Prune events past their retention, in batches that never hold writers up."""
        while True:
            try:
                total = 0
                async with self._db.pool.acquire() as conn:
                    while True:
                        removed = await changes.prune(conn, keep_days, PRUNE_BATCH)
                        total += removed
                        if removed < PRUNE_BATCH:
                            break
                        await asyncio.sleep(0.05)  # let the calls have the connection slots
                if total:
                    log.info("change feed: %d events past retention pruned", total)
            except Exception as exc:  # retried next period; the feed itself is unaffected
                log.warning("change feed pruning failed: %s", type(exc).__name__)
            await asyncio.sleep(every_s)

    def kick(self) -> None:
        """Number new events soon: a call that may have committed a change has ended."""
        self._pending.set()

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
                started = asyncio.get_running_loop().time()
                await self._number()
                spent = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(0.0, MIN_INTERVAL_S - spent))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change feed sequencing failed: %s", type(exc).__name__)
                await self._drop()
                await asyncio.sleep(SAFETY_NET_S)

    async def _number(self) -> None:
        if self._sequencer is None or self._sequencer.is_closed():
            self._sequencer = await self._db.connect_one("citizen-registry-sequencer")
        # Our own listener hears the announcement too and wakes this server's watchers.
        await changes.number_pending(self._sequencer)

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
