"""Attestations and keys through a real channel: attestations verified with the published JWKS
by joserfc (the server signs with pyjwt), key rotation, scopes of VerifyIdentity,
GetSigningKeys, and the `registry keys` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from registry.v1 import identity_service_pb2 as pb
from tests.grpc.cards import (
    NOBODY,
    issue,
    person,
    today,
)
from tests.grpc.identity import (
    DENIED,
    DOB,
    FEMALE,
    MALE,
    MATCH,
    NAME,
    REGISTRY,
    UNAUTHENTICATED,
    batch,
    jwks_of,
    next_second_after,
    verify,
    verify_attestation,
    vreq,
)
from tests.helpers import DEFAULT_BIRTH, call_error

# -- VerifyIdentity: attestations ---------------------------------------------------------------


def test_attestation_is_verifiable_with_the_published_keys(civil, cards, identity, agency, server):
    citizen = person(civil, agency, dob=DOB)
    card = issue(cards, agency, citizen.pin, issued=today()).card
    before = int(time.time())
    response = verify(
        identity,
        agency,
        citizen.pin,
        full_name=NAME,
        date_of_birth=DOB,
        card_serial=card.serial,
        correlation_id="att-1",
        want_attestation=True,
    )
    after = int(time.time())
    assert response.result == MATCH
    token = response.attestation
    assert token.count(".") == 2

    jwks = jwks_of(identity, agency)
    decoded = verify_attestation(token, jwks)
    assert decoded.header["alg"] == "ES256"
    assert decoded.header["kid"] in {k["kid"] for k in json.loads(jwks)["keys"]}
    claims = decoded.claims
    assert claims["sub"] == citizen.pin
    assert claims["agency"] == agency.id
    assert claims["result"] == "MATCH"
    assert claims["fields"] == {"full_name": True, "date_of_birth": True, "card_serial": True}
    assert claims["fields"] == dict(response.field_matches)
    assert claims["iss"] == "citizen-registry"
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == server.app.keys.lifetime_s
    jose_jwt.JWTClaimsRegistry(iss={"essential": True, "value": "citizen-registry"}).validate(
        claims
    )
    # No personal data in the attestation either: what was asked, what was answered.
    assert set(claims) <= {
        "sub",
        "agency",
        "result",
        "fields",
        "citizen_status",
        "card_state",
        "correlation_id",
        "iss",
        "iat",
        "exp",
        "jti",
    }
    assert (claims["citizen_status"], claims["card_state"]) == ("ALIVE", "ACTIVE")
    assert claims["correlation_id"] == "att-1"
    payload = json.dumps(claims, ensure_ascii=False)
    for secret in (NAME, "NGUYỄN", DEFAULT_BIRTH["hometown"], DEFAULT_BIRTH["place_of_birth"]):
        assert secret not in payload

    # Tampering with it breaks the signature.
    header, _body, signature = token.split(".")
    other = verify(
        identity, agency, citizen.pin, full_name="Trần Văn Bình", want_attestation=True
    ).attestation
    forged = f"{header}.{other.split('.')[1]}.{signature}"
    with pytest.raises(BadSignatureError):
        verify_attestation(forged, jwks)


def test_attestation_of_a_no_match_and_of_a_not_found(civil, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    jwks = jwks_of(identity, agency)
    response = verify(identity, agency, citizen.pin, sex=FEMALE, want_attestation=True)
    claims = verify_attestation(response.attestation, jwks).claims
    assert (claims["sub"], claims["result"], claims["fields"]) == (
        citizen.pin,
        "NO_MATCH",
        {"sex": False},
    )
    response = verify(identity, agency, NOBODY, sex=FEMALE, want_attestation=True)
    claims = verify_attestation(response.attestation, jwks).claims
    assert (claims["sub"], claims["result"], claims["fields"]) == (NOBODY, "NOT_FOUND", {})
    # Not asked for: none given.
    assert verify(identity, agency, citizen.pin, sex=MALE).attestation == ""


def test_key_rotation_keeps_earlier_attestations_verifiable(civil, identity, agency, server):
    citizen = person(civil, agency, dob=DOB)
    keys = server.app.keys
    old_kid = keys.current.kid
    old = verify(identity, agency, citizen.pin, sex=MALE, want_attestation=True).attestation
    next_second_after(keys.current.created)
    new_kid = keys.rotate()
    assert keys.current.kid == new_kid

    jwks = jwks_of(identity, agency)
    published = {k["kid"] for k in json.loads(jwks)["keys"]}
    assert {old_kid, new_kid} <= published
    new = verify(identity, agency, citizen.pin, sex=MALE, want_attestation=True).attestation
    assert verify_attestation(new, jwks).header["kid"] == new_kid
    assert verify_attestation(old, jwks).header["kid"] == old_kid
    assert verify_attestation(old, jwks).claims["sub"] == citizen.pin


# -- VerifyIdentity / BatchVerify: scope ---------------------------------------------------------


def test_identity_verify_scope_is_required(civil, identity, agency, make_agency):
    citizen = person(civil, agency)
    reader = make_agency(scopes=("citizen:read", "card:read"), fields=("full_name",))
    error = call_error(verify, identity, reader, citizen.pin, full_name=NAME)
    assert error.code == DENIED
    assert error.reason == "SCOPE_MISSING"
    assert error.metadata.get("required_scope") == "identity:verify"
    error = call_error(batch, identity, reader, [vreq(citizen.pin, full_name=NAME)])
    assert error.code == DENIED
    assert error.metadata.get("required_scope") == "identity:verify"
    # A token narrowed to other scopes loses it too.
    narrowed = agency.metadata(token=agency.token(scope="citizen:read"))
    with pytest.raises(grpc.RpcError) as info:
        identity.VerifyIdentity(vreq(citizen.pin, full_name=NAME), metadata=narrowed)
    assert info.value.code() == DENIED
    verifier = make_agency(scopes=("identity:verify",))
    assert verify(identity, verifier, citizen.pin, full_name=NAME).result == MATCH


def test_no_token_is_unauthenticated(identity):
    with pytest.raises(grpc.RpcError) as info:
        identity.VerifyIdentity(vreq(NOBODY, full_name=NAME))
    assert info.value.code() == UNAUTHENTICATED


# -- GetSigningKeys -----------------------------------------------------------------------------


def test_get_signing_keys_needs_only_a_valid_token(identity, make_agency, server):
    registrar = make_agency(scopes=("birth:register",))
    jwks = json.loads(jwks_of(identity, registrar))
    assert jwks["keys"]
    es256 = [k for k in jwks["keys"] if k.get("alg") == "ES256"]
    assert es256
    for key in jwks["keys"]:
        assert "d" not in key
    assert {k["kid"] for k in jwks["keys"]} == set(server.app.keys.kids)
    assert len(KeySet.import_key_set(jwks).keys) == len(jwks["keys"])


def test_get_signing_keys_without_token_is_unauthenticated(identity):
    with pytest.raises(grpc.RpcError) as info:
        identity.GetSigningKeys(pb.GetSigningKeysRequest())
    assert info.value.code() == UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        identity.GetSigningKeys(
            pb.GetSigningKeysRequest(), metadata=(("authorization", "Bearer not-a-jwt"),)
        )
    assert info.value.code() == UNAUTHENTICATED


# -- registry keys ------------------------------------------------------------------------------


def keys_command(action: str, directory: Path) -> list[str]:
    env = {
        **os.environ,
        "REGISTRY_SIGNING_KEY_DIR": str(directory),
        "REGISTRY_DATA_DIR": str(directory.parent),
    }
    result = subprocess.run(
        [str(REGISTRY), "keys", action], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout.strip().splitlines()


def test_keys_list_and_rotate(tmp_path):
    directory = tmp_path / "signing-keys"
    [first] = keys_command("list", directory)
    kid = first.removesuffix("  (signing)")
    assert first == f"{kid}  (signing)"
    assert [p.stem for p in directory.glob("*.pem")] == [kid]
    assert keys_command("list", directory) == [first]  # listing creates nothing more

    next_second_after((directory / f"{kid}.pem").stat().st_mtime)
    out = keys_command("rotate", directory)
    assert out[0].startswith("new signing key ")
    new = out[0].split()[3].rstrip(";")
    assert new != kid
    assert out[1:] == [kid, f"{new}  (signing)"]
    assert keys_command("list", directory) == [kid, f"{new}  (signing)"]
    assert sorted(p.stem for p in directory.glob("*.pem")) == sorted([kid, new])
