"""Group commit for the audit log: many calls' entries in one durable transaction.

A call that touched a citizen must not answer before its audit entry is on disk, but one
transaction (and one fsync) per call would cap the register at the disk's sync rate. So calls
hand their entries to the writer and await a future; one writer task takes everything that
arrived, appends it in one transaction, and resolves all those futures at the commit. While a
group commits the next one gathers, so groups grow with the load and the cost per entry falls.

If the group cannot be written (database unreachable), every call in it fails with UNAVAILABLE:
no answer leaves without its audit entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg

from registry.db import audit as audit_db
from registry.db.pool import Database, is_unavailable
from registry.rules.audit import Entry
from registry.rules.errors import Code, RegistryError
from registry.runtime import metrics

log = logging.getLogger(__name__)

# Entries per transaction at most: bounds the statement size when a backlog forms.
MAX_GROUP = 5_000
# Groups start at most this often. Under load the calls of a few milliseconds share one
# transaction instead of committing one by one (each commit costs the database CPU and a WAL
# flush); a lone call after a quiet moment is written at once.
MIN_GROUP_INTERVAL_S = 0.02
# A call's entries and the future it awaits (None: handed over without waiting).
_Submission = tuple[Sequence[Entry], asyncio.Future[None] | None]


class AuditUnavailable(RegistryError):
    """The audit entry could not be made durable; the call must not answer with data."""

    def __init__(self) -> None:
        super().__init__(
            Code.UNAVAILABLE,
            "AUDIT_UNAVAILABLE",
            "the access could not be recorded in the audit log; retry shortly",
            retry_after_s=1.0,
        )


class AuditWriter:
    """Collects entries from calls and commits them in groups."""

    def __init__(self, db: Database):
        self._db = db
        # Its own connection: the writer must not queue for a pool slot behind the very calls
        # that wait for it. Reopened after a failure.
        self._conn: asyncpg.Connection | None = None
        self._last: tuple[int, bytes] | None = None  # the chain's last link, as last appended
        # Submissions in arrival order; one call's entries are never split between groups.
        self._pending: list[_Submission] = []
        # The group being committed, until its calls are answered.
        self._writing: list[_Submission] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._group_started = 0.0
        self.groups = 0
        self.entries = 0

    @property
    def pending_entries(self) -> int:
        """Return how many entries wait for their group commit."""
        return sum(len(entries) for entries, _ in self._pending)

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """The writer task ended: a bug or a cancellation must not leave calls waiting for
        ever for entries nobody will write. They fail with AUDIT_UNAVAILABLE, and so does
        every later call (`record` checks the task)."""
        group = self._writing + self._pending
        self._writing, self._pending = [], []
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "audit writer stopped; %d entries not confirmed",
                sum(len(entries) for entries, _ in group),
                exc_info=task.exception(),
            )
        _answer(group, failed=True)

    async def record(self, entries: Sequence[Entry]) -> None:
        """Append entries and return once they are durable (raises AuditUnavailable)."""
        if self._closing or self._task is None or self._task.done():
            raise AuditUnavailable()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entries, future))
        self._arrived.set()
        # A caller that goes away (cancelled) cancels only its own future: its entries stay
        # pending and are written with the group.
        await future

    def submit(self, entries: Sequence[Entry]) -> None:
        """Append entries without waiting (for calls already cancelled)."""
        if entries and not self._closing:
            self._pending.append((entries, None))
            self._arrived.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._pending:
                wait = self._group_started + MIN_GROUP_INTERVAL_S - loop.time()
                if wait > 0 and not self._closing:
                    await asyncio.sleep(wait)
                self._group_started = loop.time()
                await self._commit_group()
            if self._closing:
                return
            await self._arrived.wait()
            self._arrived.clear()

    async def _commit_group(self) -> None:
        entries: list[Entry] = []
        taken = 0
        for submitted, _ in self._pending:
            if entries and len(entries) + len(submitted) > MAX_GROUP:
                break
            entries.extend(submitted)
            taken += 1
        group, self._pending = self._pending[:taken], self._pending[taken:]
        self._writing = group
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._db.connect_one("citizen-registry-audit")
            self._last = await audit_db.append(self._conn, entries, self._last)
            self.groups += 1
            self.entries += len(entries)
            metrics.AUDIT_COMMIT.observe(time.perf_counter() - started)
        except Exception as exc:
            error = exc
            self._last = None
            await self._drop_connection()
            if is_unavailable(exc):
                log.warning("audit group of %d not written: %s", len(entries), type(exc).__name__)
            else:
                log.error("audit group of %d not written", len(entries), exc_info=exc)
        self._writing = []
        _answer(group, failed=error is not None)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Write what is pending, then stop (after the server stopped taking calls)."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # a task that already stopped raises nothing here
        log.info("audit writer: %d entries in %d groups", self.entries, self.groups)
        if self._conn is not None:
            await self._conn.close(timeout=5)
            self._conn = None


def _answer(group: Sequence[_Submission], failed: bool) -> None:
    """Answer the calls waiting for a group: their entries are durable, or AUDIT_UNAVAILABLE.
    Entries handed over without waiting, and calls already gone, have nobody to answer."""
    for _, future in group:
        if future is None or future.done():
            continue
        if failed:
            future.set_exception(AuditUnavailable())
        else:
            future.set_result(None)
