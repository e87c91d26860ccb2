"""Agencies and keys change while the server runs (SPEC §6): disabled, re-enabled, revoked,
added and rotated, each taking effect within seconds even for cached tokens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import jwt

from registry.db import agencies
from tests.conftest import AUDIENCE, new_private_key, public_pem, run
from tests.grpc.auth.tokens import (
    ROUND_PACE_S,
    add_key,
    bearer,
    poll_until_refused,
    refused,
    registers,
    wait_known,
)
from tests.helpers import birth_request, call_error

# -- agency and key lifecycle ----------------------------------------------------------------------


def test_disabled_agency_is_refused_within_seconds_even_with_a_cached_token(civil, db, new_agency):
    a = new_agency(scopes=("birth:register",))
    token = a.token()
    registers(civil, db, a.metadata(token))  # verified once: now in the token cache
    db.execute("UPDATE agencies SET enabled = false WHERE id = $1", a.id)
    poll_until_refused(civil, a.metadata(token), "AGENCY_DISABLED")
    refused(civil, db, a.metadata(token), "AGENCY_DISABLED")
    refused(civil, db, a.metadata(a.token()), "AGENCY_DISABLED")  # a fresh token too


def _wait_past(epoch_s: float) -> None:
    """Sleep until a token minted now (whole-second iat) is issued at or after epoch_s."""
    while int(time.time()) < epoch_s:
        time.sleep(0.05)


def test_re_enabled_agency_refuses_tokens_issued_before_the_enable(civil, db, new_agency):
    a = new_agency(scopes=("birth:register",))
    before_disable = a.token()
    registers(civil, db, a.metadata(before_disable))  # verified once: now in the token cache
    db.execute("UPDATE agencies SET enabled = false WHERE id = $1", a.id)
    poll_until_refused(civil, a.metadata(before_disable), "AGENCY_DISABLED")
    while_disabled = a.token()
    db.execute("UPDATE agencies SET enabled = true WHERE id = $1", a.id)

    # Enabling the agency again does not revive what it signed before: neither the token it
    # was perhaps disabled for (cached as verified), nor one signed while it was disabled.
    poll_until_refused(
        civil, a.metadata(before_disable), "TOKEN_ISSUED_BEFORE_ENABLE", meanwhile="AGENCY_DISABLED"
    )
    err = refused(civil, db, a.metadata(before_disable), "TOKEN_ISSUED_BEFORE_ENABLE")
    assert "sign a new token" in err.message
    enabled_at = db.fetchval("SELECT enabled_at FROM agencies WHERE id = $1", a.id)
    assert err.metadata["enabled_at"] == enabled_at.isoformat()
    refused(civil, db, a.metadata(while_disabled), "TOKEN_ISSUED_BEFORE_ENABLE")

    _wait_past(enabled_at.timestamp())
    registers(civil, db, a.metadata(a.token()))  # a token signed after the enable works


def test_enabling_an_enabled_agency_keeps_its_tokens(civil, db, new_agency):
    a = new_agency(scopes=("birth:register",))
    token = a.token()
    registers(civil, db, a.metadata(token))
    db.execute("UPDATE agencies SET enabled = true WHERE id = $1", a.id)
    assert db.fetchval("SELECT enabled_at FROM agencies WHERE id = $1", a.id) is None
    time.sleep(1.5)  # past the server's full reload of its agency cache (1 s in tests)
    registers(civil, db, a.metadata(token))


def test_revoked_key_is_refused_within_seconds_even_with_a_cached_token(civil, db, new_agency):
    a = new_agency(scopes=("birth:register",))
    token = a.token()
    registers(civil, db, a.metadata(token))
    db.execute(
        "UPDATE agency_keys SET revoked_at = now() WHERE agency_id = $1 AND kid = $2", a.id, a.kid
    )
    poll_until_refused(civil, a.metadata(token), "TOKEN_KEY_REVOKED")
    refused(civil, db, a.metadata(token), "TOKEN_KEY_REVOKED")
    refused(civil, db, a.metadata(a.token()), "TOKEN_KEY_REVOKED")


def _admitted_right_after(
    civil: Any, dsn: str, rounds: int, add_one: Callable[..., Any]
) -> list[str]:
    """Commit a new agency or key, then call with it at once, `rounds` times; return refusals.

    One connection, and the call follows the commit without delay, the way a provisioning
    script registers an agency and then uses it. Rounds are paced below the server's bound on
    unknown-key lookups (20 per second, registry/runtime/caches.py), which protects the database
    from floods of invented key ids and is not what is tested here.
    """

    async def go() -> list[str]:
        conn = await asyncpg.connect(dsn)
        refusals: list[str] = []
        try:
            for _ in range(rounds):
                await asyncio.sleep(ROUND_PACE_S)
                token = await add_one(conn)
                err = call_error(
                    civil.RegisterBirth, birth_request(full_name=""), metadata=bearer(token)
                )
                if err.code != grpc.StatusCode.INVALID_ARGUMENT:  # admitted, then validated
                    refusals.append(err.reason)
        finally:
            await conn.close()
        return refusals

    return run(go())


def _signed(agency_id: str, kid: str, key: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": agency_id, "aud": AUDIENCE, "iat": now, "exp": now + 300},
        key,
        algorithm="ES256",
        headers={"kid": kid},
    )


def test_newly_added_agency_works_immediately(civil, dsn):
    # No waiting for the periodic refresh: a token naming a key the server has not seen makes
    # it reload its agency directory before refusing.
    async def add_agency(conn: asyncpg.Connection) -> str:
        agency_id = f"test-new-{uuid.uuid4().hex[:10]}"
        key = new_private_key("ES256")
        await agencies.add(
            conn,
            agency_id=agency_id,
            name="Brand new agency",
            kind="OTHER",
            scopes=["birth:register"],
            fields=[],
            rate_limit=None,
            kid="k1",
            algorithm="ES256",
            public_key_pem=public_pem(key),
        )
        return _signed(agency_id, "k1", key)

    refusals = _admitted_right_after(civil, dsn, 25, add_agency)
    assert refusals == [], (
        f"{len(refusals)}/25 agencies were refused right after being committed: {set(refusals)}"
    )


def test_newly_added_key_works_immediately(civil, dsn, new_agency):
    a = new_agency(scopes=("birth:register",))

    async def add_key_(conn: asyncpg.Connection) -> str:
        kid = f"k-{uuid.uuid4().hex[:8]}"
        key = new_private_key("ES256")
        await agencies.add_key(
            conn, agency_id=a.id, kid=kid, algorithm="ES256", public_key_pem=public_pem(key)
        )
        return _signed(a.id, kid, key)

    refusals = _admitted_right_after(civil, dsn, 25, add_key_)
    assert refusals == [], (
        f"{len(refusals)}/25 rotated-in keys were refused right after being committed: "
        f"{set(refusals)}"
    )


def test_key_rotation_both_keys_work(civil, db, dsn, new_agency):
    a = new_agency(scopes=("birth:register",))
    registers(civil, db, a.metadata())
    k2 = new_private_key("ES256")
    add_key(dsn, a.id, "k2", k2)
    wait_known(civil, a.metadata(a.token(kid="k2", key=k2)))
    registers(civil, db, a.metadata(a.token(kid="k2", key=k2)))
    registers(civil, db, a.metadata(a.token()))  # k1 still good
    # Each key only verifies its own signatures.
    refused(civil, db, a.metadata(a.token(kid="k2")), "TOKEN_SIGNATURE_INVALID")
    refused(civil, db, a.metadata(a.token(kid="k1", key=k2)), "TOKEN_SIGNATURE_INVALID")


def test_rotation_to_another_algorithm_then_revoking_the_old_key(civil, db, dsn, new_agency):
    a = new_agency(scopes=("birth:register",))
    old_token = a.token()
    registers(civil, db, a.metadata(old_token))
    ed = new_private_key("EdDSA")
    add_key(dsn, a.id, "ed-2026", ed, algorithm="EdDSA")
    new_token = a.token(kid="ed-2026", key=ed, algorithm="EdDSA")
    wait_known(civil, a.metadata(new_token))
    registers(civil, db, a.metadata(new_token))
    db.execute(
        "UPDATE agency_keys SET revoked_at = now() WHERE agency_id = $1 AND kid = 'k1'", a.id
    )
    poll_until_refused(civil, a.metadata(old_token), "TOKEN_KEY_REVOKED")
    registers(civil, db, a.metadata(new_token))
