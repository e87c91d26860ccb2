"""Connection pools and the classification of database failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from registry.db.pins import CounterRanges, check_secret
from registry.db.replicas import Replicas
from registry.rules.errors import Code, RegistryError

T = TypeVar("T")

log = logging.getLogger(__name__)

# SQLSTATE classes meaning "the database is not there right now", not "your query is wrong":
# 08 connection exception, 53 insufficient resources, 57P operator intervention (shutdown).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P")


def is_unavailable(exc: BaseException) -> bool:
    """Tell whether an exception means the database cannot be reached (answer UNAVAILABLE).

    The exception's causes count too: when the server crashes under a connection, asyncpg may
    raise a secondary error while releasing it (InternalClientError "release() called on a
    free connection holder") whose context is the real, connection-class failure.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if _is_unavailable(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError,
    ):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)


def is_conflict(exc: BaseException) -> bool:
    """Tell whether an exception is a transaction conflict (SQLSTATE 40: retry the call)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("40")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release reset query.

    The registry keeps no session state on pooled connections (no SET, LISTEN, advisory
    locks or cursors outside a transaction), and asyncpg still ends any open transaction
    before calling this; the default reset would cost one round trip per call.
    """


@dataclass
class Database:
    """The pools the registry works with."""

    pool: asyncpg.Pool
    """Reads and durable writes."""

    counters: asyncpg.Pool
    """PIN bucket counter increments: asynchronous commit, see registry.db.pins."""

    dsn: str

    ranges: CounterRanges = field(init=False)
    """PIN counter values reserved ahead for births (from `counters`)."""

    pin_secret: bytes | None = field(default=None, init=False)
    """The registry's PIN secret (registry.runtime.pin_secret), once use_pin_secret gave it."""

    replicas: Replicas | None = field(default=None, init=False)
    """Read replicas for the read-only RPCs, once use_replicas gave them."""

    def __post_init__(self) -> None:
        self.ranges = CounterRanges(self.counters)

    async def use_pin_secret(self, secret: bytes) -> None:
        """Check the PIN secret against the database's fingerprint and key new buckets with it."""
        async with self.pool.acquire() as conn:
            await check_secret(conn, secret)
        self.pin_secret = secret
        self.ranges.secret = secret

    def use_replicas(self, urls: tuple[str, ...], max_lag_s: float, pool_max_size: int) -> Replicas:
        """Send reads to these replicas while they are healthy (checked by Replicas.run)."""
        self.replicas = Replicas(urls, max_lag_s, pool_max_size)
        return self.replicas

    async def read(
        self,
        work: Callable[[asyncpg.Pool], Awaitable[T]],
        confirm: Callable[[T, asyncpg.Pool], Awaitable[T]] | None = None,
    ) -> T:
        """Run a read-only query function on a healthy replica, else on the primary.

        A caller never misses its own write: a NOT_FOUND from a replica is asked again of the
        primary, and `confirm(result, primary)` may re-ask it for what the replica's answer
        lacks (a verification that did not match, a feed page that was not full). A replica
        that fails for want of itself is marked down and the primary answers.
        """
        replica = self.replicas.pick() if self.replicas is not None else None
        if replica is not None and replica.pool is not None:
            try:
                result = await work(replica.pool)
            except RegistryError as exc:
                if exc.code is not Code.NOT_FOUND:
                    raise
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                assert self.replicas is not None
                self.replicas.mark_down(replica, f"read failed ({type(exc).__name__})")
            else:
                replica.reads += 1
                return result if confirm is None else await confirm(result, self.pool)
        return await work(self.pool)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 4, max_size: int = 16) -> Database:
        """Open the pools (raises if the database cannot be reached)."""
        # Queries are bounded by PostgreSQL's statement_timeout rather than asyncpg's
        # command_timeout, which arms a Python timer around every query (measured ~4% of a
        # verification's CPU).
        common = {
            "timeout": 5.0,  # connect timeout: fail fast into UNAVAILABLE
            "max_inactive_connection_lifetime": 300.0,
            "reset": _keep_session,
        }
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={"application_name": "citizen-registry", "statement_timeout": "30s"},
            **common,
        )
        try:
            counters = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=4,
                server_settings={
                    "application_name": "citizen-registry-counters",
                    "synchronous_commit": "off",
                    "statement_timeout": "30s",
                },
                **common,
            )
        except BaseException:
            await pool.close()
            raise
        return cls(pool=pool, counters=counters, dsn=dsn)

    @classmethod
    async def wait_and_connect(
        cls, dsn: str, *, min_size: int = 4, max_size: int = 16, give_up_s: float | None = None
    ) -> Database:
        """Connect, retrying with backoff while the database is unavailable."""
        delay = 0.2
        loop = asyncio.get_running_loop()
        deadline = None if give_up_s is None else loop.time() + give_up_s
        while True:
            try:
                return await cls.connect(dsn, min_size=min_size, max_size=max_size)
            except Exception as exc:
                if not is_unavailable(exc) or (deadline is not None and loop.time() > deadline):
                    raise
                log.warning(
                    "database unavailable (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def connect_one(self, application_name: str) -> asyncpg.Connection:
        """Open a dedicated connection (durable commits, the pools' timeouts)."""
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn,
            timeout=5.0,
            server_settings={"application_name": application_name, "statement_timeout": "30s"},
        )
        return conn

    async def ping(self, within_s: float = 2.0) -> bool:
        """Tell whether the database answers a trivial query within within_s seconds."""
        try:
            async with asyncio.timeout(within_s):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        """Close the pools, waiting briefly for connections in use."""
        if self.replicas is not None:
            await self.replicas.close()
        for pool in (self.pool, self.counters):
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()
