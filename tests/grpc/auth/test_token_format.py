"""The token attack matrix (SPEC §6): missing and malformed tokens, time claims, other claims.

RegisterBirth (scope birth:register) is the probe RPC: a call that gets past the gate writes a
citizen, so `db.counts()` unchanged proves a refused call had no effect.
"""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from tests.conftest import AUDIENCE, new_private_key
from tests.grpc.auth.tokens import (
    add_key,
    bearer,
    claims_for,
    refused,
    registers,
    wait_known,
    without,
)
from tests.helpers import signed_jwt

# -- missing and malformed ----------------------------------------------------------------------


def test_no_authorization_header_is_token_missing(civil, db):
    err = refused(civil, db, (), "TOKEN_MISSING")
    assert err.message == "the call needs 'authorization: Bearer <agency JWT>' metadata"


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
