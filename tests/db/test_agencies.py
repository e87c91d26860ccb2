"""registry/db/agencies.py against PostgreSQL.

Agencies are managed by operator commands (`registry agency ...`), which connect as the owner
role; the server only reads them, as the runtime role. The agencies here carry placeholder keys,
so they live in a database of this module's own: the session's servers would otherwise load
them and log each unusable key (the fuzz tests refuse any error in the server's log).
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from registry.db import agencies
from registry.rules.errors import Code, RegistryError


def new_id(prefix: str = "repo") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def add(conn: asyncpg.Connection, agency_id: str, **overrides: object) -> None:
    fields: dict[str, object] = {
        "agency_id": agency_id,
        "name": f"Agency {agency_id}",
        "kind": "POLICE",
        "scopes": ["citizen.read"],
        "fields": ["full_name"],
        "rate_limit": 50,
        "kid": "k1",
        "algorithm": "ES256",
        "public_key_pem": "PEM-1",
    }
    fields.update(overrides)
    await agencies.add(conn, **fields)  # type: ignore[arg-type]


async def find(conn: asyncpg.Connection | asyncpg.Pool, agency_id: str):
    return next((a for a in await agencies.list_all(conn) if a.id == agency_id), None)


async def test_add_registers_the_agency_with_its_first_key(private_owner, private_rt):
    agency_id = new_id()
    await add(
        private_owner, agency_id, name="Bộ Tư pháp", kind="JUSTICE", scopes=["a", "b"],
        fields=["sex"], rate_limit=None, name_matching="DIACRITIC_INSENSITIVE", miss_budget=30,
        watch_types=["BORN", "DIED"], confidential=True, kid="key-2026", algorithm="EdDSA",
        public_key_pem="PEM",
    )  # fmt: skip
    got = await find(private_rt, agency_id)
    assert got is not None
    assert (got.name, got.kind, got.scopes, got.fields) == (
        "Bộ Tư pháp",
        "JUSTICE",
        ("a", "b"),
        ("sex",),
    )
    assert (got.rate_limit, got.enabled, got.name_matching, got.miss_budget) == (
        None,
        True,
        "DIACRITIC_INSENSITIVE",
        30,
    )
    assert (got.watch_types, got.confidential, got.enabled_at) == (("BORN", "DIED"), True, None)
    [key] = got.keys
    assert (key.kid, key.algorithm, key.public_key_pem, key.revoked_at) == (
        "key-2026",
        "EdDSA",
        "PEM",
        None,
    )
    plain = new_id()
    await add(private_owner, plain)
    defaults = await find(private_rt, plain)
    assert defaults is not None
    assert (defaults.name_matching, defaults.miss_budget, defaults.watch_types) == (
        "STRICT",
        None,
        (),
    )
    assert defaults.confidential is False and defaults.rate_limit == 50


async def test_add_refuses_an_existing_id_and_is_atomic(private_owner, private_rt):
    agency_id = new_id()
    await add(private_owner, agency_id)
    with pytest.raises(RegistryError) as exists:
        await add(private_owner, agency_id, name="Another", kid="k2")
    assert (exists.value.code, exists.value.reason) == (Code.ALREADY_EXISTS, "AGENCY_EXISTS")
    got = await find(private_rt, agency_id)
    assert got is not None and got.name == f"Agency {agency_id}" and len(got.keys) == 1
    # A key the database refuses leaves no agency without a key behind.
    broken = new_id()
    with pytest.raises(asyncpg.CheckViolationError):
        await add(private_owner, broken, algorithm="HS256")
    assert await find(private_rt, broken) is None
    assert not private_owner.is_in_transaction()


async def test_keys_are_added_revoked_and_listed_in_order(private_owner, private_rt):
    agency_id = new_id()
    await add(private_owner, agency_id, kid="mid")
    await asyncio.sleep(0.01)
    await agencies.add_key(
        private_owner, agency_id=agency_id, kid="zed", algorithm="RS256", public_key_pem="P2"
    )
    await asyncio.sleep(0.01)
    await agencies.add_key(
        private_owner, agency_id=agency_id, kid="abc", algorithm="EdDSA", public_key_pem="P4"
    )
    with pytest.raises(RegistryError) as twice:
        await agencies.add_key(
            private_owner, agency_id=agency_id, kid="zed", algorithm="ES256", public_key_pem="P3"
        )
    assert (twice.value.code, twice.value.reason) == (Code.ALREADY_EXISTS, "KEY_EXISTS")
    with pytest.raises(RegistryError) as nobody:
        await agencies.add_key(
            private_owner, agency_id=new_id(), kid="k", algorithm="ES256", public_key_pem="P"
        )
    assert (nobody.value.code, nobody.value.reason) == (Code.NOT_FOUND, "AGENCY_NOT_FOUND")

    await agencies.revoke_key(private_owner, agency_id, "mid")
    got = await find(private_rt, agency_id)
    assert got is not None
    assert [(k.kid, k.algorithm, k.public_key_pem) for k in got.keys] == [
        ("mid", "ES256", "PEM-1"),
        ("zed", "RS256", "P2"),
        ("abc", "EdDSA", "P4"),
    ]
    assert got.keys[0].revoked_at is not None and got.keys[1].revoked_at is None
    assert got.keys[2].revoked_at is None
    assert got.keys[0].created_at < got.keys[1].created_at
    for kid in ("mid", "never"):  # revoked already, or no such key
        with pytest.raises(RegistryError) as missing:
            await agencies.revoke_key(private_owner, agency_id, kid)
        assert (missing.value.code, missing.value.reason) == (Code.NOT_FOUND, "KEY_NOT_FOUND")

    assert await agencies.key_exists(private_rt, agency_id, "mid")  # revoked keys still count
    assert await agencies.key_exists(private_rt, agency_id, "zed")
    assert not await agencies.key_exists(private_rt, agency_id, "never")
    assert not await agencies.key_exists(private_rt, new_id(), "mid")


async def test_set_enabled_records_when_an_agency_comes_back(private_owner, private_rt):
    agency_id = new_id()
    await add(private_owner, agency_id)
    await agencies.set_enabled(private_owner, agency_id, False)
    off = await find(private_rt, agency_id)
    assert off is not None and off.enabled is False and off.enabled_at is None
    await agencies.set_enabled(private_owner, agency_id, True)
    on = await find(private_rt, agency_id)
    assert on is not None and on.enabled is True and on.enabled_at is not None
    await agencies.set_enabled(private_owner, agency_id, True)  # already enabled: the time stays
    assert (await find(private_rt, agency_id)).enabled_at == on.enabled_at
    with pytest.raises(RegistryError) as missing:
        await agencies.set_enabled(private_owner, new_id(), False)
    assert (missing.value.code, missing.value.reason) == (Code.NOT_FOUND, "AGENCY_NOT_FOUND")


async def test_list_all_is_ordered_by_id_from_a_pool_or_a_connection(private_owner, private_db):
    stem = new_id("order")
    for suffix in ("b", "a", "c"):
        await add(private_owner, f"{stem}-{suffix}", kid=f"k-{suffix}")
    pool = await asyncpg.create_pool(private_db.runtime, min_size=1, max_size=1)
    try:
        listed = await agencies.list_all(pool)
        async with pool.acquire() as conn:
            assert await agencies.list_all(conn) == listed
            assert not conn.is_in_transaction()
    finally:
        await pool.close()
    mine = [a for a in listed if a.id.startswith(stem)]
    assert [(a.id, [k.kid for k in a.keys]) for a in mine] == [
        (f"{stem}-a", ["k-a"]),
        (f"{stem}-b", ["k-b"]),
        (f"{stem}-c", ["k-c"]),
    ]
