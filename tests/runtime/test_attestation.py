"""Tests for registry.runtime.attestation: the registry's key ring and the attestations it signs.

Tokens are signed by the product with pyjwt and verified here with joserfc, a different JOSE
implementation, from the published JWKS alone: exactly what a third party does offline.
Key ages are set with os.utime (a key's creation time is its file's modification time), so
pruning is tested without waiting.
"""

from __future__ import annotations

import json
import stat
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from registry.runtime.attestation import ALGORITHM, ISSUER, SigningKeys

LIFETIME = 3600
CLAIMS = {
    "sub": "001090000123",
    "agency": "bank-01",
    "result": "MATCH",
    "fields": {"full_name": True, "card_serial": True},
}


def keyset(ring: SigningKeys) -> KeySet:
    return KeySet.import_key_set(json.loads(ring.jwks_json()))


def verified(token: str, ring_or_jwks: SigningKeys | str) -> jwt.Token:
    """Verify a token with joserfc and the published keys only; return it."""
    jwks = ring_or_jwks if isinstance(ring_or_jwks, str) else ring_or_jwks.jwks_json()
    return jwt.decode(token, KeySet.import_key_set(json.loads(jwks)), algorithms=[ALGORITHM])


def pem_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pem"))


def next_second() -> None:
    """Wait until the wall-clock second changes.

    Key ids start with their creation second; see test_rotations_within_one_second_* for what
    happens to keys created in the same second.
    """
    now = time.time()
    time.sleep(int(now) + 1.02 - now)


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["result"] = "NO_MATCH" if claims.get("result") == "MATCH" else "MATCH"
    forged = urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


# -- the key ring on disk -----------------------------------------------------------------------


def test_open_creates_one_private_key_file_readable_by_the_owner_only(tmp_path):
    directory = tmp_path / "signing-keys"
    ring = SigningKeys.open(directory)
    [path] = pem_files(directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert path.stem == ring.current.kid
    assert ring.kids == [path.stem]
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_second_open_reuses_the_key(tmp_path):
    first = SigningKeys.open(tmp_path)
    second = SigningKeys.open(tmp_path)
    assert len(pem_files(tmp_path)) == 1
    assert second.kids == first.kids
    assert second.jwks_json() == first.jwks_json()
    # A token of one instance verifies with the other's published keys.
    verified(first.sign(CLAIMS), second)


def test_jwks_publishes_public_keys_only(tmp_path):
    ring = SigningKeys.open(tmp_path)
    [jwk] = json.loads(ring.jwks_json())["keys"]
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == "P-256"
    assert jwk["alg"] == "ES256"
    assert jwk["use"] == "sig"
    assert jwk["kid"] == ring.current.kid
    assert {"x", "y"} <= set(jwk)
    assert "d" not in jwk  # the private scalar
    assert len(keyset(ring).keys) == 1


# -- signing ------------------------------------------------------------------------------------


def test_sign_gives_a_token_verifiable_with_the_jwks_by_another_jose_library(tmp_path):
    ring = SigningKeys.open(tmp_path, lifetime_s=LIFETIME)
    before = int(time.time())
    token = ring.sign(CLAIMS)
    after = int(time.time())
    assert token.count(".") == 2  # compact JWS

    decoded = verified(token, ring)
    assert decoded.header["alg"] == "ES256"
    assert decoded.header["kid"] == ring.current.kid
    claims: dict[str, Any] = decoded.claims
    assert claims["iss"] == ISSUER == "citizen-registry"
    assert claims["sub"] == "001090000123"
    assert claims["agency"] == "bank-01"
    assert claims["result"] == "MATCH"
    assert claims["fields"] == {"full_name": True, "card_serial": True}
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == LIFETIME
    assert isinstance(claims["jti"], str) and claims["jti"]
    # joserfc's own claim checks agree (iss, exp, iat).
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": ISSUER}).validate(claims)
    # Each attestation is unique.
    assert verified(ring.sign(CLAIMS), ring).claims["jti"] != claims["jti"]


def test_the_default_lifetime_is_applied(tmp_path):
    ring = SigningKeys.open(tmp_path)
    claims = verified(ring.sign(CLAIMS), ring).claims
    assert claims["exp"] - claims["iat"] == 30 * 24 * 3600


def test_a_tampered_token_fails_verification(tmp_path):
    ring = SigningKeys.open(tmp_path)
    token = ring.sign(CLAIMS)
    verified(token, ring)
    with pytest.raises(BadSignatureError):
        verified(tampered(token), ring)
    # A signature cut short or from another token fails too.
    header, payload, signature = token.split(".")
    other = ring.sign({**CLAIMS, "sub": "001090000999"}).split(".")[2]
    for forged in (f"{header}.{payload}.{other}", f"{header}.{payload}.{signature[:-4]}"):
        with pytest.raises(JoseError):
            verified(forged, ring)


def test_a_token_from_another_ring_fails_verification(tmp_path):
    ours = SigningKeys.open(tmp_path / "ours")
    theirs = SigningKeys.open(tmp_path / "theirs")
    with pytest.raises(JoseError):
        verified(theirs.sign(CLAIMS), ours)


# -- rotation -----------------------------------------------------------------------------------


def test_rotate_new_key_signs_old_key_stays_published(tmp_path):
    ring = SigningKeys.open(tmp_path)
    old = ring.current.kid
    old_token = ring.sign(CLAIMS)
    next_second()
    new = ring.rotate()
    assert new != old
    assert ring.current.kid == new
    assert ring.kids == [old, new]
    assert len(pem_files(tmp_path)) == 2
    published = {k["kid"] for k in json.loads(ring.jwks_json())["keys"]}
    assert published == {old, new}

    new_token = ring.sign(CLAIMS)
    assert verified(new_token, ring).header["kid"] == new
    # The attestation signed before the rotation still verifies with the new JWKS.
    assert verified(old_token, ring).header["kid"] == old
    assert verified(old_token, ring).claims["sub"] == CLAIMS["sub"]


def test_another_process_rotation_is_picked_up_by_reload(tmp_path):
    server = SigningKeys.open(tmp_path)
    operator = SigningKeys.open(tmp_path)
    next_second()
    new = operator.rotate()
    assert server.current.kid != new
    server.reload()
    assert server.current.kid == new
    assert server.kids == operator.kids
    verified(server.sign(CLAIMS), operator)


def test_rotations_within_one_second_still_make_the_newest_key_sign(tmp_path):
    # `registry keys rotate` run twice in a row, or rotated right after first start: the key
    # rotate() returns must be the one that signs from then on.
    ring = SigningKeys.open(tmp_path)
    for _ in range(6):
        new = ring.rotate()
        assert ring.current.kid == new, f"rotate() made {new} but {ring.current.kid} signs"
        assert verified(ring.sign(CLAIMS), ring).header["kid"] == new


# -- pruning ------------------------------------------------------------------------------------


def test_prune_removes_a_retired_key_only_after_its_successor_lifetime(tmp_path):
    ring = SigningKeys.open(tmp_path, lifetime_s=60)
    old_token = ring.sign(CLAIMS)
    ring.rotate()
    retired, current = ring.kids
    assert verified(old_token, ring).header["kid"] == retired
    successor_created = ring._keys[-1].created

    # Attestations of the retired key stay valid until one lifetime after its successor came.
    assert ring.prune(now=successor_created + 1) == []
    assert ring.prune(now=successor_created + 59) == []
    assert ring.kids == [retired, current]

    assert ring.prune(now=successor_created + 61) == [retired]
    assert ring.kids == [current]
    assert ring.current.kid == current
    assert [p.stem for p in pem_files(tmp_path)] == [current]


def _kid_at(when: float, suffix: str) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%S.%fZ") + f"-{suffix}"


def test_prune_judges_each_retired_key_by_its_own_successor(tmp_path):
    ring = SigningKeys.open(tmp_path, lifetime_s=60)
    ring.rotate()
    ring.rotate()
    # Re-date the three keys 100 s apart, as if rotated at those times.
    t0 = time.time() - 1000
    for index, kid in enumerate(ring.kids):
        (tmp_path / f"{kid}.pem").rename(tmp_path / f"{_kid_at(t0 + 100 * index, 'abc')}.pem")
    ring.reload()
    first, second, third = ring.kids
    # Past second's creation + lifetime (first's last attestation expired) but not third's.
    assert ring.prune(now=t0 + 100 + 61) == [first]
    assert ring.kids == [second, third]
    assert ring.current.kid == third
    assert ring.prune(now=t0 + 200 + 59) == []
    assert ring.prune(now=t0 + 200 + 61) == [second]


def test_prune_never_removes_the_current_key(tmp_path):
    ring = SigningKeys.open(tmp_path, lifetime_s=1)
    only = ring.current.kid
    assert ring.prune(now=time.time() + 10_000) == []
    assert ring.kids == [only]

    ring.rotate()
    retired, current = ring.kids
    assert ring.prune(now=time.time() + 10_000) == [retired]
    assert ring.kids == [current]
    assert ring.prune(now=time.time() + 10_000) == []
    assert [p.stem for p in pem_files(tmp_path)] == [current]
