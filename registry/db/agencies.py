"""Calling agencies and their public keys (SPEC §6)."""

from __future__ import annotations

import asyncpg

from registry.rules.agencies import Agency, AgencyKey
from registry.rules.errors import Code, RegistryError


async def list_all(pool_or_conn: asyncpg.Connection | asyncpg.Pool) -> list[Agency]:
    """Return every agency with its keys, ordered by id, from one consistent snapshot."""
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await list_all(conn)
    conn = pool_or_conn
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _list_all(conn)


async def _list_all(conn: asyncpg.Connection) -> list[Agency]:
    rows = await conn.fetch(
        "SELECT id, name, kind, scopes, fields, rate_limit, enabled, name_matching, miss_budget, "
        "enabled_at, watch_types, confidential FROM agencies ORDER BY id"
    )
    key_rows = await conn.fetch(
        "SELECT agency_id, kid, algorithm, public_key_pem, created_at, revoked_at "
        "FROM agency_keys ORDER BY agency_id, created_at"
    )
    keys: dict[str, list[AgencyKey]] = {}
    for k in key_rows:
        keys.setdefault(k["agency_id"], []).append(
            AgencyKey(
                k["kid"], k["algorithm"], k["public_key_pem"], k["created_at"], k["revoked_at"]
            )
        )
    return [
        Agency(
            id=r["id"],
            name=r["name"],
            kind=r["kind"],
            scopes=tuple(r["scopes"]),
            fields=tuple(r["fields"]),
            rate_limit=r["rate_limit"],
            enabled=r["enabled"],
            keys=tuple(keys.get(r["id"], ())),
            name_matching=r["name_matching"],
            miss_budget=r["miss_budget"],
            enabled_at=r["enabled_at"],
            watch_types=tuple(r["watch_types"]),
            confidential=r["confidential"],
        )
        for r in rows
    ]


async def add(
    conn: asyncpg.Connection,
    *,
    agency_id: str,
    name: str,
    kind: str,
    scopes: list[str],
    fields: list[str],
    rate_limit: int | None,
    kid: str,
    algorithm: str,
    public_key_pem: str,
    name_matching: str = "STRICT",
    miss_budget: int | None = None,
    watch_types: list[str] | None = None,
    confidential: bool = False,
) -> None:
    """Register an agency with its first key, atomically."""
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO agencies "
                "(id, name, kind, scopes, fields, rate_limit, name_matching, miss_budget, "
                "watch_types, confidential) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                agency_id,
                name,
                kind,
                scopes,
                fields,
                rate_limit,
                name_matching,
                miss_budget,
                watch_types or [],
                confidential,
            )
        except asyncpg.UniqueViolationError:
            raise RegistryError(
                Code.ALREADY_EXISTS, "AGENCY_EXISTS", f"agency {agency_id!r} already exists"
            ) from None
        await add_key(
            conn, agency_id=agency_id, kid=kid, algorithm=algorithm, public_key_pem=public_key_pem
        )


async def add_key(
    conn: asyncpg.Connection, *, agency_id: str, kid: str, algorithm: str, public_key_pem: str
) -> None:
    """Register another public key of an agency (key rotation)."""
    try:
        await conn.execute(
            "INSERT INTO agency_keys (agency_id, kid, algorithm, public_key_pem) "
            "VALUES ($1, $2, $3, $4)",
            agency_id,
            kid,
            algorithm,
            public_key_pem,
        )
    except asyncpg.UniqueViolationError:
        raise RegistryError(
            Code.ALREADY_EXISTS, "KEY_EXISTS", f"agency {agency_id!r} already has a key {kid!r}"
        ) from None
    except asyncpg.ForeignKeyViolationError:
        raise RegistryError(
            Code.NOT_FOUND, "AGENCY_NOT_FOUND", f"no agency {agency_id!r}"
        ) from None


async def revoke_key(conn: asyncpg.Connection, agency_id: str, kid: str) -> None:
    """Revoke a key: tokens it signed stop being accepted within seconds."""
    status = await conn.execute(
        "UPDATE agency_keys SET revoked_at = now() "
        "WHERE agency_id = $1 AND kid = $2 AND revoked_at IS NULL",
        agency_id,
        kid,
    )
    if status == "UPDATE 0":
        raise RegistryError(
            Code.NOT_FOUND, "KEY_NOT_FOUND", f"agency {agency_id!r} has no active key {kid!r}"
        )


async def set_enabled(conn: asyncpg.Connection, agency_id: str, enabled: bool) -> None:
    """Enable or disable an agency: a disabled agency's tokens are refused within seconds.

    Enabling a disabled agency records the time (a trigger of migration 0012): tokens issued
    before it stay refused.
    """
    status = await conn.execute(
        "UPDATE agencies SET enabled = $2, updated_at = now() WHERE id = $1", agency_id, enabled
    )
    if status == "UPDATE 0":
        raise RegistryError(Code.NOT_FOUND, "AGENCY_NOT_FOUND", f"no agency {agency_id!r}")


async def key_exists(conn: asyncpg.Connection | asyncpg.Pool, agency_id: str, kid: str) -> bool:
    """Tell whether an agency has registered a key with this kid (revoked or not)."""
    found = await conn.fetchval(
        "SELECT true FROM agency_keys WHERE agency_id = $1 AND kid = $2", agency_id, kid
    )
    return found is True
