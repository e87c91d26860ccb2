"""The token attack matrix (SPEC §6): every bad token is refused, precisely, and writes nothing.

RegisterBirth (scope birth:register) is the probe RPC: a call that gets past the gate writes a
citizen, so `db.counts()` unchanged proves a refused call had no effect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from registry.db import agencies
from registry.v1 import (
    citizen_pb2,
    population_service_pb2,
    population_service_pb2_grpc,
)
from tests.conftest import AUDIENCE, new_private_key, public_pem, run
from tests.helpers import ErrorDetails, birth_request, call_error, death_request, signed_jwt

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


@pytest.fixture(scope="module")
def agency(agency: Any, civil: Any) -> Any:
    """The session agency holding every scope, known to the server."""
    wait_known(civil, agency.metadata())
    return agency


@pytest.fixture
def new_agency(make_agency: Any, civil: Any) -> Callable[..., Any]:
    """make_agency, returning once the server knows the agency."""

    def factory(**kwargs: Any) -> Any:
        created = make_agency(**kwargs)
        wait_known(civil, created.metadata())
        return created

    return factory


# -- missing and malformed ----------------------------------------------------------------------


def test_no_authorization_header_is_token_missing(civil, db):
    refused(civil, db, (), "TOKEN_MISSING")


def test_other_metadata_without_authorization_is_token_missing(civil, db):
    refused(civil, db, (("x-purpose", "audit"),), "TOKEN_MISSING")


def test_basic_scheme_is_token_missing(civil, db):
    refused(civil, db, (("authorization", "Basic xyz"),), "TOKEN_MISSING")


def test_bearer_without_token_is_token_missing(civil, db):
    refused(civil, db, (("authorization", "Bearer "),), "TOKEN_MISSING")


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9", "not base64!.%%%.&&&", "e30.e30"],
)
def test_garbage_bearer_token_is_malformed(civil, db, garbage):
    refused(civil, db, bearer(garbage), "TOKEN_MALFORMED")


def test_bearer_scheme_is_case_insensitive(civil, db, agency):
    registers(civil, db, (("authorization", f"bearer {agency.token()}"),))


# -- time ---------------------------------------------------------------------------------------


def test_expired_token(civil, db, agency):
    refused(
        civil, db, agency.metadata(agency.token(iat_offset=-1000, lifetime=300)), "TOKEN_EXPIRED"
    )


def test_token_issued_in_the_future(civil, db, agency):
    refused(civil, db, agency.metadata(agency.token(iat_offset=600)), "TOKEN_NOT_YET_VALID")


def test_token_with_future_nbf(civil, db, agency):
    nbf = int(time.time()) + 600
    refused(civil, db, agency.metadata(agency.token(nbf=nbf)), "TOKEN_NOT_YET_VALID")


def test_24_hour_token_is_refused(civil, db, agency):
    refused(civil, db, agency.metadata(agency.token(lifetime=24 * 3600)), "TOKEN_LIFETIME_TOO_LONG")


def test_lifetime_limit_is_exactly_15_minutes(civil, db, agency):
    refused(civil, db, agency.metadata(agency.token(lifetime=901)), "TOKEN_LIFETIME_TOO_LONG")
    registers(civil, db, agency.metadata(agency.token(lifetime=900)))


# -- claims -------------------------------------------------------------------------------------


def test_wrong_audience(civil, db, agency):
    err = refused(
        civil,
        db,
        agency.metadata(agency.token(audience="other-registry")),
        "TOKEN_AUDIENCE_INVALID",
    )
    assert AUDIENCE in err.message


@pytest.mark.parametrize("claim", ["exp", "iat", "aud"])
def test_missing_required_claim(civil, db, agency, claim):
    payload = without(claims_for(agency), claim)
    token = jwt.encode(payload, agency.private_key, algorithm="ES256", headers={"kid": agency.kid})
    err = refused(civil, db, agency.metadata(token), "TOKEN_CLAIM_MISSING")
    assert claim in err.message


def test_missing_issuer(civil, db, agency):
    payload = without(claims_for(agency), "iss")
    token = jwt.encode(payload, agency.private_key, algorithm="ES256", headers={"kid": agency.kid})
    refused(civil, db, agency.metadata(token), "TOKEN_ISSUER_MISSING")


def test_missing_kid(civil, db, agency):
    token = jwt.encode(claims_for(agency), agency.private_key, algorithm="ES256")
    refused(civil, db, agency.metadata(token), "TOKEN_KID_MISSING")


def test_unknown_issuer(civil, db, agency):
    stranger = f"never-registered-{uuid.uuid4().hex[:8]}"
    refused(civil, db, agency.metadata(agency.token(iss=stranger)), "TOKEN_KEY_UNKNOWN")


def test_unknown_kid(civil, db, agency):
    refused(civil, db, agency.metadata(agency.token(kid="no-such-kid")), "TOKEN_KEY_UNKNOWN")


def test_kid_of_another_agency_is_unknown(civil, db, dsn, new_agency):
    a, b = new_agency(), new_agency()
    b_key = new_private_key()
    add_key(dsn, b.id, "b-only", b_key)
    wait_known(civil, b.metadata(b.token(kid="b-only", key=b_key)))
    refused(civil, db, a.metadata(a.token(kid="b-only")), "TOKEN_KEY_UNKNOWN")


def test_scope_claim_of_the_wrong_type(civil, db, agency):
    payload = claims_for(agency, scope=42)
    token = jwt.encode(payload, agency.private_key, algorithm="ES256", headers={"kid": agency.kid})
    refused(civil, db, agency.metadata(token), "TOKEN_SCOPE_INVALID")


# Header parameters and claims of the wrong type, range or characters, signed with the agency's
# registered key: each is refused for what it is, before any lookup (a kid or iss with a NUL
# used to reach PostgreSQL and answer INTERNAL; iat as a string raised a TypeError).
BAD_VALUES = [
    ({"kid": "k1\x00"}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": "\x00\x01\x1b[2J"}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": "k\ud800"}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": "k" * 129}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": 1}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": ["k1"]}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": {"k": "k1"}}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": True}, {}, "TOKEN_HEADER_INVALID"),
    ({"kid": "k" * 10_000}, {}, "TOKEN_MALFORMED"),
    ({"crit": ["exp"]}, {}, "TOKEN_HEADER_INVALID"),
    ({"b64": False}, {}, "TOKEN_HEADER_INVALID"),
    ({"alg": ["ES256"]}, {}, "TOKEN_ALGORITHM_NOT_ALLOWED"),
    ({"alg": "ES256\x00"}, {}, "TOKEN_ALGORITHM_NOT_ALLOWED"),
    ({}, {"iss": "{agency}\x00"}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iss": "\x00"}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iss": "a" * 10_000}, "TOKEN_MALFORMED"),
    ({}, {"iss": "a" * 65}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iss": 7}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iss": ["{agency}"]}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iat": "{now}"}, "TOKEN_CLAIM_INVALID"),
    ({}, {"exp": "{later}"}, "TOKEN_CLAIM_INVALID"),
    ({}, {"nbf": "{now}"}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iat": True}, "TOKEN_CLAIM_INVALID"),
    ({}, {"exp": None}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iat": [1]}, "TOKEN_CLAIM_INVALID"),
    ({}, {"exp": {"t": 1}}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iat": 10**30}, "TOKEN_CLAIM_INVALID"),
    ({}, {"iat": -1}, "TOKEN_CLAIM_INVALID"),
    ({}, {"exp": float("inf")}, "TOKEN_MALFORMED"),
    ({}, {"exp": float("nan")}, "TOKEN_MALFORMED"),
    ({}, {"aud": 5}, "TOKEN_CLAIM_INVALID"),
    ({}, {"aud": [AUDIENCE, 5]}, "TOKEN_CLAIM_INVALID"),
    ({}, {"aud": []}, "TOKEN_CLAIM_INVALID"),
    ({}, {"aud": {"a": AUDIENCE}}, "TOKEN_CLAIM_INVALID"),
    ({}, {"scope": {"birth:register": True}}, "TOKEN_SCOPE_INVALID"),
    ({}, {"scope": ["birth:register", 1]}, "TOKEN_SCOPE_INVALID"),
]


@pytest.mark.parametrize("header, claims, reason", BAD_VALUES, ids=lambda v: ascii(v)[:40])
def test_header_and_claim_values_of_the_wrong_kind(civil, db, agency, header, claims, reason):
    now = int(time.time())
    fill = {"{agency}": agency.id, "{now}": str(now), "{later}": str(now + 300)}
    claims = {
        k: fill.get(v, v.replace("{agency}", agency.id)) if isinstance(v, str) else v
        for k, v in claims.items()
    }
    full_header = {"alg": "ES256", "typ": "JWT", "kid": agency.kid, **header}
    token = signed_jwt(full_header, {**claims_for(agency), **claims}, agency.private_key)
    err = refused(civil, db, agency.metadata(token), reason)
    if reason in ("TOKEN_CLAIM_INVALID", "TOKEN_HEADER_INVALID"):
        named = err.metadata.get("claim") or err.metadata.get("parameter")
        assert named in {**header, **claims}, err
    assert "\x00" not in err.message and len(err.message) < 300


def test_a_well_formed_float_iat_is_accepted(civil, db, agency):
    now = time.time()
    token = signed_jwt(
        {"alg": "ES256", "typ": "JWT", "kid": agency.kid},
        claims_for(agency, iat=now, exp=now + 300.5),
        agency.private_key,
    )
    registers(civil, db, agency.metadata(token))


# -- algorithms and signatures --------------------------------------------------------------------


def test_alg_none(civil, db, agency):
    header = {"alg": "none", "kid": agency.kid, "typ": "JWT"}
    token = f"{b64url_json(header)}.{b64url_json(claims_for(agency))}."
    refused(civil, db, agency.metadata(token), "TOKEN_ALGORITHM_NOT_ALLOWED")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_spellings_with_a_real_signature_appended(civil, db, agency, alg):
    good = agency.token().split(".")
    header = {"alg": alg, "kid": agency.kid, "typ": "JWT"}
    token = f"{b64url_json(header)}.{good[1]}.{good[2]}"
    refused(civil, db, agency.metadata(token), "TOKEN_ALGORITHM_NOT_ALLOWED")


@pytest.mark.parametrize("alg, digest", [("HS256", hashlib.sha256), ("HS512", hashlib.sha512)])
def test_hmac_signed_with_the_public_key_as_secret(civil, db, agency, alg, digest):
    # The classic key-confusion attack: anyone has the public key; a verifier that lets the
    # header pick the algorithm would check this HMAC with the PEM as secret and accept it.
    header = {"alg": alg, "kid": agency.kid, "typ": "JWT"}
    signing_input = f"{b64url_json(header)}.{b64url_json(claims_for(agency))}"
    secret = public_pem(agency.private_key).encode()
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    token = f"{signing_input}.{b64url(signature)}"
    refused(civil, db, agency.metadata(token), "TOKEN_ALGORITHM_NOT_ALLOWED")


def test_token_signed_by_a_different_key_under_the_agencys_kid(civil, db, agency):
    impostor = new_private_key("ES256")
    refused(civil, db, agency.metadata(agency.token(key=impostor)), "TOKEN_SIGNATURE_INVALID")


def test_header_alg_rs256_for_an_es256_key(civil, db, agency):
    rsa_key = new_private_key("RS256")
    token = agency.token(key=rsa_key, algorithm="RS256")
    refused(civil, db, agency.metadata(token), "TOKEN_ALGORITHM_MISMATCH")


def test_header_alg_es256_for_an_eddsa_key(civil, db, new_agency):
    ed = new_agency(algorithm="EdDSA")
    token = ed.token(key=new_private_key("ES256"), algorithm="ES256")
    refused(civil, db, ed.metadata(token), "TOKEN_ALGORITHM_MISMATCH")


def _tamper(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    claims.update(changes)
    return f"{header}.{b64url_json(claims)}.{signature}"


def test_tampered_exp_breaks_the_signature(civil, db, agency):
    token = agency.token()
    exp = json.loads(unb64url(token.split(".")[1]))["exp"]
    refused(civil, db, agency.metadata(_tamper(token, exp=exp + 60)), "TOKEN_SIGNATURE_INVALID")


def test_tampered_scope_breaks_the_signature(civil, db, new_agency):
    both = new_agency(scopes=("birth:register", "death:register"))
    token = both.token(scope="death:register")
    refused(
        civil, db, both.metadata(_tamper(token, scope="birth:register")), "TOKEN_SIGNATURE_INVALID"
    )


def test_tampered_iss_to_another_agency_breaks_the_signature(civil, db, new_agency):
    a, b = new_agency(), new_agency()  # both have an ES256 key "k1"
    refused(civil, db, a.metadata(_tamper(a.token(), iss=b.id)), "TOKEN_SIGNATURE_INVALID")


def test_signature_of_other_bytes(civil, db, agency):
    header, payload, _ = agency.token().split(".")
    forged = f"{header}.{payload}.{b64url(bytes(range(64)))}"
    refused(civil, db, agency.metadata(forged), "TOKEN_SIGNATURE_INVALID")


def test_signature_that_does_not_decode_is_malformed(civil, db, agency):
    token = agency.token()
    assert len(token.split(".")[2]) % 4 == 2  # 64-byte ES256 signature: 86 characters
    # 85 characters is never valid base64url (a length of 4n + 1 cannot be decoded).
    refused(civil, db, agency.metadata(token[:-1]), "TOKEN_MALFORMED")


def test_empty_signature_on_an_es256_header(civil, db, agency):
    header, payload, _ = agency.token().split(".")
    refused(civil, db, agency.metadata(f"{header}.{payload}."), "TOKEN_SIGNATURE_INVALID")


def test_refusal_of_a_tampered_token_does_not_poison_the_good_one(civil, db, agency):
    token = agency.token()
    registers(civil, db, agency.metadata(token))
    refused(
        civil,
        db,
        agency.metadata(_tamper(token, iat=int(time.time()) - 10)),
        "TOKEN_SIGNATURE_INVALID",
    )
    registers(civil, db, agency.metadata(token))


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
def test_each_key_algorithm_works(civil, db, new_agency, algorithm):
    a = new_agency(algorithm=algorithm, scopes=("birth:register",))
    pin = registers(civil, db, a.metadata())
    assert db.fetchval("SELECT full_name FROM citizens WHERE pin = $1", pin) == "Nguyễn Văn An"


def test_valid_token_is_reusable_until_it_expires(civil, db, agency):
    token = agency.token()
    first = registers(civil, db, agency.metadata(token))
    second = registers(civil, db, agency.metadata(token))
    assert first != second


# -- scopes -------------------------------------------------------------------------------------


def test_agency_without_the_scope_is_permission_denied(civil, db, new_agency):
    a = new_agency(scopes=("death:register", "card:read"))
    before = db.counts()
    err = call_error(civil.RegisterBirth, birth_request(), metadata=a.metadata())
    assert (err.code, err.domain, err.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        DOMAIN,
        "SCOPE_MISSING",
    )
    assert err.metadata.get("required_scope") == "birth:register"
    assert_no_trace(err)
    assert db.counts() == before


def test_token_scope_narrows_the_agency_scopes(civil, db, new_agency):
    both = new_agency(scopes=("birth:register", "death:register"))
    pin = registers(civil, db, both.metadata())

    narrowed = both.metadata(both.token(scope="death:register"))
    before = db.counts()
    err = call_error(civil.RegisterBirth, birth_request(), metadata=narrowed)
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    assert err.metadata.get("required_scope") == "birth:register"
    assert db.counts() == before

    response = civil.RegisterDeath(death_request(pin), metadata=narrowed)
    assert response.citizen.pin == pin
    assert response.citizen.status == citizen_pb2.CITIZEN_STATUS_DECEASED


def test_token_scope_as_a_list_narrows_too(civil, db, new_agency):
    both = new_agency(scopes=("birth:register", "death:register"))
    err = call_error(
        civil.RegisterBirth,
        birth_request(),
        metadata=both.metadata(both.token(scope=["death:register"])),
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    registers(civil, db, both.metadata(both.token(scope=["birth:register", "death:register"])))


def test_token_scope_cannot_widen_the_agency_scopes(civil, db, new_agency):
    deaths_only = new_agency(scopes=("death:register",))
    token = deaths_only.token(scope="birth:register death:register card:issue")
    before = db.counts()
    err = call_error(civil.RegisterBirth, birth_request(), metadata=deaths_only.metadata(token))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    assert err.metadata.get("required_scope") == "birth:register"
    assert db.counts() == before


def test_empty_scope_claim_grants_nothing(civil, db, agency):
    err = call_error(
        civil.RegisterBirth, birth_request(), metadata=agency.metadata(agency.token(scope=""))
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


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


# -- public services ----------------------------------------------------------------------------


def test_health_check_needs_no_token(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    assert (
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    named = stub.Check(
        health_pb2.HealthCheckRequest(service="registry.v1.CivilRegistrationService"), timeout=5
    )
    assert named.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_api_without_a_token(channel):
    reflection_db = ProtoReflectionDescriptorDatabase(channel)
    services = set(reflection_db.get_services())
    assert {
        "registry.v1.CivilRegistrationService",
        "registry.v1.CardService",
        "registry.v1.IdentityService",
        "registry.v1.PopulationService",
        "registry.v1.AuditService",
        "grpc.health.v1.Health",
    } <= services
    proto = reflection_db.FindFileContainingSymbol("registry.v1.CivilRegistrationService")
    service = next(s for s in proto.service if s.name == "CivilRegistrationService")
    assert {"RegisterBirth", "RegisterDeath"} <= {m.name for m in service.method}


# -- a client-streaming RPC is gated like the others -------------------------------------------


@pytest.fixture(scope="module")
def population(channel):
    return population_service_pb2_grpc.PopulationServiceStub(channel)


def _import_requests():
    yield population_service_pb2.ImportCitizensRequest(source_id="s1")


def test_client_streaming_rpc_without_a_token_is_unauthenticated(population):
    err = call_error(population.ImportCitizens, _import_requests())
    assert (err.code, err.domain, err.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        DOMAIN,
        "TOKEN_MISSING",
    )
    assert_no_trace(err)


def test_client_streaming_rpc_checks_the_scope(population, new_agency):
    a = new_agency(scopes=("birth:register",))
    err = call_error(population.ImportCitizens, _import_requests(), metadata=a.metadata())
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    assert err.metadata.get("required_scope") == "population:import"
