"""The token attack matrix (SPEC §6): algorithms, signatures and scopes.

RegisterBirth (scope birth:register) is the probe RPC: a call that gets past the gate writes a
citizen, so `db.counts()` unchanged proves a refused call had no effect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import grpc
import pytest

from registry.v1 import (
    citizen_pb2,
)
from tests.conftest import new_private_key, public_pem
from tests.grpc.auth.tokens import (
    DOMAIN,
    assert_no_trace,
    b64url,
    b64url_json,
    claims_for,
    refused,
    registers,
    unb64url,
)
from tests.helpers import birth_request, call_error, death_request

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
    assert err.message == "the token does not grant the scope 'birth:register' this method needs"
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
