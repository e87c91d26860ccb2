"""Helpers for the token attack matrix: token parts, refusals that must write nothing, keys
added behind the server's back and waiting until it knows them.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import asyncpg
import grpc
import pytest

from registry.db import agencies
from tests.conftest import AUDIENCE, public_pem, run
from tests.helpers import ErrorDetails, birth_request, call_error

DOMAIN = "citizen-registry"
POLL_S = 0.2
PROPAGATION_S = 5.0
ROUND_PACE_S = 0.08


# -- helpers ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_for(agency: Any, lifetime: int = 300, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": agency.id, "aud": AUDIENCE, "iat": now, "exp": now + lifetime}
    payload.update(overrides)
    return payload


def without(payload: dict[str, Any], claim: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != claim}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def assert_no_trace(err: ErrorDetails) -> None:
    assert "Traceback" not in err.message
    assert 'File "' not in err.message
    assert all("Traceback" not in v for v in err.metadata.values())


def refused(civil: Any, db: Any, metadata: Any, reason: str) -> ErrorDetails:
    """Call RegisterBirth with metadata; it must be UNAUTHENTICATED for reason, writing nothing."""
    before = db.counts()
    err = call_error(civil.RegisterBirth, birth_request(), metadata=metadata)
    assert (err.code, err.domain, err.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        DOMAIN,
        reason,
    ), err
    assert err.message, "a refusal must say why in words"
    assert_no_trace(err)
    assert db.counts() == before
    return err


def registers(civil: Any, db: Any, metadata: Any) -> str:
    """Call RegisterBirth with metadata; it must succeed and write the citizen. Return the PIN."""
    response = civil.RegisterBirth(birth_request(), metadata=metadata)
    pin = response.citizen.pin
    assert len(pin) == 12
    assert db.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", pin) == 1
    return pin


def poll_until_refused(civil: Any, metadata: Any, reason: str, meanwhile: str = "") -> float:
    """Call until the gate refuses with reason; return how long that took (fails after 5 s).

    Polls with an invalid request (empty name): INVALID_ARGUMENT while still admitted, so
    polling itself never writes a citizen. ``meanwhile``: the refusal the server may still give
    until the change reaches it (e.g. AGENCY_DISABLED until an enable does).
    """
    started = time.monotonic()
    last: ErrorDetails | None = None
    while time.monotonic() - started < PROPAGATION_S:
        last = call_error(civil.RegisterBirth, birth_request(full_name=""), metadata=metadata)
        if last.code == grpc.StatusCode.UNAUTHENTICATED and last.reason != meanwhile:
            assert (last.reason, last.domain) == (reason, DOMAIN), last
            return time.monotonic() - started
        if last.code != grpc.StatusCode.UNAUTHENTICATED:
            assert last.code == grpc.StatusCode.INVALID_ARGUMENT, last
        time.sleep(POLL_S)
    pytest.fail(f"token still admitted {PROPAGATION_S} s later (last answer: {last})")


def add_key(dsn: str, agency_id: str, kid: str, private_key: Any, algorithm: str = "ES256") -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await agencies.add_key(
                conn,
                agency_id=agency_id,
                kid=kid,
                algorithm=algorithm,
                public_key_pem=public_pem(private_key),
            )
        finally:
            await conn.close()

    run(go())


def wait_known(civil: Any, metadata: Any) -> None:
    """Wait until the server's agency directory knows the token's key (probe writes nothing).

    Tests of other behaviour use this so that only the tests of "works immediately" depend on
    how fast a new agency or key reaches the server.
    """
    deadline = time.monotonic() + PROPAGATION_S
    while True:
        err = call_error(civil.RegisterBirth, birth_request(full_name=""), metadata=metadata)
        if err.reason != "TOKEN_KEY_UNKNOWN":
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not learn the new key within {PROPAGATION_S} s")
        time.sleep(0.05)
