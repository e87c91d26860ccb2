"""Idempotency keys of mutating calls: (agency, request_id) -> what the first call produced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from registry.rules.errors import Code, RegistryError

T = TypeVar("T")


@dataclass(frozen=True)
class StoredRequest:
    """The record of a request that was carried out."""

    method: str
    request_hash: bytes
    result_key: str
    answer: bytes | None = None
    """What the call answered, as kept with the key (None: not kept, see `Answer`)."""


@dataclass(frozen=True)
class Answer:
    """The answer of a mutation that returns a citizen, as its first call left it.

    `body` is the caller's rendering of the record (the API layer's Citizen message, already
    cut down to what the agency may learn), kept with the idempotency key in the transaction
    that made the change, so that a replay returns it and never the record as it is now.
    None for keys stored before migration 0016: such a replay can only name `result_key`.
    """

    result_key: str
    body: bytes | None


async def lookup(conn: asyncpg.Connection, agency_id: str, request_id: str) -> StoredRequest | None:
    """Return the stored request for this key, if any."""
    row = await conn.fetchrow(
        "SELECT method, request_hash, result_key, answer FROM idempotency_keys "
        "WHERE agency_id = $1 AND request_id = $2",
        agency_id,
        request_id,
    )
    if row is None:
        return None
    answer = None if row["answer"] is None else bytes(row["answer"])
    return StoredRequest(row["method"], bytes(row["request_hash"]), row["result_key"], answer)


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


def replayed_answer(
    stored: StoredRequest, method: str, request_hash: bytes, request_id: str
) -> Answer:
    """Return the kept answer of a repeated request; raise ALREADY_EXISTS otherwise."""
    return Answer(check_replay(stored, method, request_hash, request_id), stored.answer)


async def run_once_answered(
    conn: asyncpg.Connection,
    *,
    agency_id: str,
    request_id: str,
    method: str,
    request_hash: bytes,
    result_key: str,
    work: Callable[[], Awaitable[T]],
    render: Callable[[T], bytes],
) -> tuple[Answer, bool]:
    """Carry out `work` once per (agency, request_id), keeping its rendered answer with the key.

    As `run_once`, except that a replay is answered with what the first call answered
    (`render` of its result, stored in the same transaction as the change), not with whatever
    the record holds by then.
    """
    stored = await lookup(conn, agency_id, request_id)
    if stored is None:
        async with conn.transaction():
            if await claim(conn, agency_id, request_id, method, request_hash, result_key):
                body = render(await work())
                await conn.execute(
                    "UPDATE idempotency_keys SET answer = $3 "
                    "WHERE agency_id = $1 AND request_id = $2",
                    agency_id,
                    request_id,
                    body,
                )
                return Answer(result_key, body), False
        stored = await lookup(conn, agency_id, request_id)
        assert stored is not None  # claimed by a call that committed
    return replayed_answer(stored, method, request_hash, request_id), True
