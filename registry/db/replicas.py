"""Streaming read replicas (REGISTRY_REPLICA_URLS): which may serve reads, and how far behind.

Each server process watches every replica twice a second: is it a standby at all (a promoted
former replica is a diverged primary: never read from it), and how far behind the primary is
its replay? Lag is measured in time against the primary's own WAL position: every check
records (primary's pg_current_wal_lsn, when); a replica's lag is the age of the oldest such
sample that its pg_last_wal_replay_lsn has not yet reached (0 when it has replayed the newest).
Unlike now() - pg_last_xact_replay_timestamp(), this does not call an idle, fully caught-up
replica late. A replica that is down, not a standby, or more than max_lag_s behind is skipped
until a check finds it healthy again; a read that fails on a replica for want of the replica
marks it down at once and is answered by the primary (registry.db.pool.Database.read).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

CHECK_S = 0.5
_CONNECT_TIMEOUT_S = 2.0
_PRIMARY_LSN = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
_REPLICA_STATE = (
    "SELECT pg_is_in_recovery() AS standby, "
    "(coalesce(pg_last_wal_replay_lsn(), '0/0') - '0/0'::pg_lsn)::bigint AS replayed"
)


@dataclass
class Replica:
    """One replica: its pool once reachable, and what the last check found."""

    url: str
    pool: asyncpg.Pool | None = None
    healthy: bool = False
    lag_s: float | None = None
    problem: str = "not checked yet"
    reads: int = 0
    """Reads it answered (diagnostics and tests)."""

    @property
    def address(self) -> str:
        """host:port: the URL holds a password, so this is how the replica is named."""
        return self.url.rsplit("@", 1)[-1].split("/", 1)[0]

    def __str__(self) -> str:
        return f"replica {self.address}"


@dataclass
class Replicas:
    """The replicas of one server process and their health."""

    urls: tuple[str, ...]
    max_lag_s: float
    pool_max_size: int = 8
    check_s: float = CHECK_S
    replicas: list[Replica] = field(init=False)
    _samples: collections.deque[tuple[int, float]] = field(init=False)
    _turn: itertools.count[int] = field(init=False, default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.replicas = [Replica(url) for url in self.urls]
        self._samples = collections.deque()

    def pick(self) -> Replica | None:
        """Return a healthy replica (in turn), or None: read from the primary."""
        healthy = [r for r in self.replicas if r.healthy and r.pool is not None]
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)]

    def mark_down(self, replica: Replica, problem: str) -> None:
        """Stop reading from a replica until a check finds it healthy."""
        if replica.healthy:
            log.warning("%s skipped: %s", replica, problem)
        replica.healthy, replica.problem = False, problem

    async def run(self, primary: asyncpg.Pool) -> None:
        """Check every replica every check_s seconds, forever."""
        while True:
            await self.check(primary)
            await asyncio.sleep(self.check_s)

    async def check(self, primary: asyncpg.Pool) -> None:
        """Check every replica once against the primary's current WAL position."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                position = int(await primary.fetchval(_PRIMARY_LSN))
        except Exception as exc:
            # Without the primary's position no lag can be known: read nothing stale.
            for replica in self.replicas:
                self.mark_down(replica, f"primary position unknown ({type(exc).__name__})")
            return
        now = loop.time()
        self._samples.append((position, now))
        keep_s = self.max_lag_s + 4 * self.check_s
        while len(self._samples) > 1 and now - self._samples[0][1] > keep_s:
            self._samples.popleft()
        await asyncio.gather(*(self._check_one(r, now) for r in self.replicas))

    async def _check_one(self, replica: Replica, now: float) -> None:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                if replica.pool is None:
                    replica.pool = await _open_pool(replica.url, self.pool_max_size)
                row = await replica.pool.fetchrow(_REPLICA_STATE)
        except Exception as exc:
            self.mark_down(replica, f"unreachable ({type(exc).__name__})")
            return
        if not row["standby"]:
            self.mark_down(replica, "not a standby (promoted?): diverged from the primary")
            return
        replayed = int(row["replayed"])
        behind = [t for lsn, t in self._samples if lsn > replayed]
        replica.lag_s = now - behind[0] if behind else 0.0
        if replica.lag_s > self.max_lag_s:
            self.mark_down(replica, f"{replica.lag_s:.1f} s behind the primary")
            return
        if not replica.healthy:
            log.warning("%s serving reads (%.1f s behind)", replica, replica.lag_s)
        replica.healthy, replica.problem = True, ""

    async def close(self) -> None:
        """Close the replicas' pools."""
        for replica in self.replicas:
            if replica.pool is not None:
                pool, replica.pool, replica.healthy = replica.pool, None, False
                try:
                    await asyncio.wait_for(pool.close(), timeout=5)
                except Exception:
                    pool.terminate()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip the per-release reset query (see registry.db.pool)."""


async def _open_pool(url: str, max_size: int) -> asyncpg.Pool:
    options: dict[str, Any] = {
        "min_size": 1,
        "max_size": max_size,
        "timeout": _CONNECT_TIMEOUT_S,
        "max_inactive_connection_lifetime": 300.0,
        "reset": _keep_session,
        "server_settings": {
            "application_name": "citizen-registry-reads",
            "statement_timeout": "30s",
        },
    }
    pool: asyncpg.Pool = await asyncpg.create_pool(url, **options)
    return pool
