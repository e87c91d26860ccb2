"""Idempotency keys of mutating calls: (agency, request_id) -> what the first call produced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from registry.errors import Code, RegistryError

T = TypeVar("T")


@dataclass(frozen=True)
class StoredRequest:
    """The record of a request that was carried out."""

    method: str
    request_hash: bytes
    result_key: str


async def lookup(conn: asyncpg.Connection, agency_id: str, request_id: str) -> StoredRequest | None:
    """Return the stored request for this key, if any."""
    row = await conn.fetchrow(
        "SELECT method, request_hash, result_key FROM idempotency_keys "
        "WHERE agency_id = $1 AND request_id = $2",
        agency_id,
        request_id,
    )
    if row is None:
        return None
    return StoredRequest(row["method"], bytes(row["request_hash"]), row["result_key"])


async def claim(
    conn: asyncpg.Connection,
    agency_id: str,
    request_id: str,
    method: str,
    request_hash: bytes,
    result_key: str,
) -> bool:
    """Record the key inside the caller's transaction; False if it is already taken.

    A concurrent call with the same key blocks on the unique index until the first one
    commits or rolls back, so exactly one of them carries the request out.
    """
    row = await conn.fetchval(
        "INSERT INTO idempotency_keys (agency_id, request_id, method, request_hash, result_key) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
        agency_id,
        request_id,
        method,
        request_hash,
        result_key,
    )
    return row is True


def check_replay(stored: StoredRequest, method: str, request_hash: bytes, request_id: str) -> str:
    """Return the original result key of a repeated request; raise ALREADY_EXISTS otherwise."""
    if stored.method != method or stored.request_hash != request_hash:
        raise RegistryError(
            Code.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
            f"request_id {request_id!r} was already used by this agency for a different request "
            f"({stored.method}); use a new request_id for a new request",
            metadata={"request_id": request_id, "original_method": stored.method},
        )
    return stored.result_key


async def run_once(
    conn: asyncpg.Connection,
    *,
    agency_id: str,
    request_id: str,
    method: str,
    request_hash: bytes,
    result_key: str,
    work: Callable[[], Awaitable[T]],
    replay: Callable[[str], Awaitable[T]],
) -> tuple[T, bool]:
    """Carry out `work` once per (agency, request_id); return (result, replayed).

    The key is claimed first, inside the transaction that does the work: a concurrent
    identical call waits on it and then replays, instead of seeing the change half-made or
    calling it a conflict. If `work` raises, the transaction (claim included) rolls back, so a
    refused request can be corrected and resent under the same key. `replay` receives the
    original call's result key.
    """
    stored = await lookup(conn, agency_id, request_id)
    if stored is None:
        async with conn.transaction():
            if await claim(conn, agency_id, request_id, method, request_hash, result_key):
                return await work(), False
        stored = await lookup(conn, agency_id, request_id)
        assert stored is not None  # claimed by a call that committed
    return await replay(check_replay(stored, method, request_hash, request_id)), True
